// Expert-parallel token exchange for one MoE layer: layout (who goes where, deduplicated),
// dispatch (all_to_all_v of hidden rows + route entries), combine (all_to_all_v back and the
// weighted sum). The layout is a pure function of (top-k ids, weights, placement, rank) shared
// by every backend; data movement goes through kernels::Backend and Communicator.
//
// Buffer layouts on rank r (T own tokens, k = top_k, N ranks; "own" = rows rank r sends to
// itself, which never pass through the communicator):
//
//   send rows   [S, H]   S = sum_d send_counts[d]; rows for rank 0 first, then rank 1, ...;
//                        within a destination in ascending token order; a token appears ONCE
//                        per destination holding any of its experts (dedup). Only the S - own
//                        rows for other ranks are gathered into a buffer.
//   send routes [S, k]   RouteEntry per row: (local_slot on the destination, weight), in the
//                        token's top-k order; unused entries have local_slot = -1.
//   recv rows   [R, H]   R = sum_s recv_counts[s]. Logically in source-rank order (recv_routes,
//                        pair_of_entry use it); in memory the own block is moved last: rows from
//                        other ranks in source order, then own rows, gathered straight from
//                        hidden. row_index points into this physical order.
//   expert in   row_index [P] -> recv row; grouped by local slot ascending, rows ascending.
//   expert out  [P, H]   one row per (recv row, route entry) pair, same order as row_index.
//   partial     [R, H]   partial[r] = sum_j weight_j * expert_out[pair(r, j)] in route order;
//                        physical order of the recv rows.
//   returned    [S - own, H]  combine sends the other ranks' partial rows back: the exact reverse
//                        of dispatch. Own rows are read from partial where they lie.
//   y           [T, H]   y[t] = sum of the rows of t in destination order (fp32).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"

namespace moe::parallel {

// (local slot on the destination, router weight); one type with the device layout's.
using RouteEntry = kernels::RouteEntry;

// Pure layout for the source side of one layer (no communication).
struct DispatchLayout {
  int num_ranks = 0;
  int top_k = 0;
  int64_t num_tokens = 0;
  std::vector<int64_t> send_counts;     // [N] rows per destination
  std::vector<int32_t> send_token;      // [S] token index of each sent row
  std::vector<RouteEntry> send_routes;  // [S * k]
  std::vector<int64_t> token_offsets;   // [T + 1] into token_rows
  std::vector<int32_t> token_rows;      // sent-row indices of each token, destination order
  std::vector<int64_t> pairs_per_rank;  // [N] (token, expert) pairs routed to each rank
  std::vector<int64_t> expert_tokens;   // [num_experts] pairs per logical expert

  int64_t num_send_rows() const { return static_cast<int64_t>(send_token.size()); }
};

// Builds the layout. topk_ids / topk_weights: [num_tokens, top_k] (host). A replicated expert's
// pairs are split over its replicas by ReplicaSplit (placement.h), in ascending token order.
DispatchLayout build_dispatch_layout(const LayerPlacement& placement, int rank,
                                     std::span<const int32_t> topk_ids,
                                     std::span<const float> topk_weights, int64_t num_tokens,
                                     int top_k);

// Receiver-side grouping of received rows by local slot (pure).
struct ExpertBatch {
  std::vector<int32_t> row_index;      // [P] recv row of each pair
  std::vector<int64_t> slot_begin;     // [num_local_slots + 1] range of each slot in row_index
  std::vector<int32_t> pair_of_entry;  // [R * k] pair index of each route entry, -1 if unused

  int64_t num_pairs() const { return static_cast<int64_t>(row_index.size()); }
};
ExpertBatch group_by_slot(std::span<const RouteEntry> recv_routes, int64_t num_recv_rows, int top_k,
                          int num_local_slots);

// Per-layer traffic and timing of one dispatch+combine on this rank.
// bytes_remote_without_dedup counts, per remote (token, expert) pair, one hidden row plus one
// RouteEntry going out and one hidden row coming back: what an exchange without dedup would move.
struct ExchangeStats {
  int64_t rows_sent_remote = 0;  // rows to other ranks
  int64_t rows_kept_local = 0;   // rows to this rank
  int64_t pairs_remote = 0;      // (token, expert) pairs to other ranks (no-dedup row count)
  int64_t rows_received = 0;
  int64_t bytes_sent_remote = 0;  // dispatch + combine payload to other ranks (rows + routes)
  int64_t bytes_kept_local = 0;
  int64_t bytes_remote_without_dedup = 0;  // same traffic at one row per (token, expert)
  int64_t pairs_received = 0;  // (row, expert) pairs computed on this rank (all sources)

  // Accumulates counters (e.g. over the layers and steps of a run).
  ExchangeStats& operator+=(const ExchangeStats& o);
};

// The traffic counters of one dispatch+combine on `rank`, from the rows and (token, expert)
// pairs it sends to each rank and receives from each rank ([N] each). Both dispatchers use it.
ExchangeStats exchange_stats(int rank, std::span<const int64_t> send_rows,
                             std::span<const int64_t> send_pairs,
                             std::span<const int64_t> recv_rows,
                             std::span<const int64_t> recv_pairs, int64_t hidden, int top_k);

// Reusable staging of exchange_rows.
template <class T>
struct ExchangeScratch {
  std::vector<int64_t> send_elems, recv_elems;
  std::vector<T> host_send, host_recv;
};

// Moves rows of `width` elements of T between ranks (all_to_all_v; counts in rows), from and to
// backend memory: straight through the communicator when it moves the backend's memory (NCCL, or
// a host backend with MPI), else staged through host memory (a device backend with MPI).
template <class T>
void exchange_rows(Communicator& comm, kernels::Backend& backend, int64_t width, const T* send,
                   std::span<const int64_t> send_rows, T* recv, std::span<const int64_t> recv_rows,
                   ExchangeScratch<T>& scratch) {
  const int n = comm.size();
  scratch.send_elems.resize(n);
  scratch.recv_elems.resize(n);
  size_t send_size = 0, recv_size = 0;
  for (int r = 0; r < n; ++r) {
    scratch.send_elems[r] = send_rows[r] * width;
    scratch.recv_elems[r] = recv_rows[r] * width;
    send_size += static_cast<size_t>(scratch.send_elems[r]);
    recv_size += static_cast<size_t>(scratch.recv_elems[r]);
  }
  if (comm.device_buffers() || backend.is_host_memory()) {
    comm.all_to_all_v<T>({send, send_size}, scratch.send_elems, {recv, recv_size},
                         scratch.recv_elems);
    return;
  }
  scratch.host_send.resize(send_size);
  scratch.host_recv.resize(recv_size);
  if (send_size > 0) backend.download(scratch.host_send.data(), send, send_size * sizeof(T));
  comm.all_to_all_v<T>(scratch.host_send, scratch.send_elems, scratch.host_recv,
                       scratch.recv_elems);
  if (recv_size > 0) backend.upload(recv, scratch.host_recv.data(), recv_size * sizeof(T));
}

// What dispatch hands to expert compute, and what combine needs to undo it.
// recv_rows points into the Dispatcher's own buffer: valid until its next dispatch().
struct DispatchResult {
  const float* recv_rows = nullptr;  // [R, H] in backend memory, own rows last (see above)
  int64_t num_recv_rows = 0;
  ExpertBatch batch;                    // groups for grouped_expert_swiglu
  DispatchLayout layout;                // source-side layout (combine's handle)
  std::vector<int64_t> recv_counts;     // [N]
  std::vector<RouteEntry> recv_routes;  // [R * k]
};

class Dispatcher {
 public:
  Dispatcher(Communicator& comm, kernels::Backend& backend, int64_t hidden, int top_k);

  // hidden: [num_tokens, H] in backend memory; ids/weights [num_tokens, k] on the host.
  // Collective: every rank calls it, with num_tokens == 0 allowed.
  DispatchResult dispatch(const float* hidden, int64_t num_tokens,
                          std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                          const LayerPlacement& placement);

  // expert_out: [P, H] in backend memory (P = result.batch.row_index.size()); writes y
  // [num_tokens, H] (backend memory). Collective.
  void combine(const float* expert_out, const DispatchResult& result, float* y);

  const ExchangeStats& last_stats() const { return stats_; }
  // Marks the layout, dispatch and combine phases on `timer` (not owned; nullptr: no marks).
  void set_timer(kernels::PhaseTimer* timer, int layout_phase, int dispatch_phase,
                 int combine_phase) {
    timer_ = timer;
    layout_phase_ = layout_phase;
    dispatch_phase_ = dispatch_phase;
    combine_phase_ = combine_phase;
  }

 private:
  Communicator& comm_;
  kernels::Backend& backend_;
  int64_t hidden_;
  int top_k_;
  ExchangeStats stats_;
  kernels::PhaseTimer* timer_ = nullptr;
  int layout_phase_ = 0, dispatch_phase_ = 0, combine_phase_ = 0;
  void mark(int phase) {
    if (timer_ != nullptr) timer_->mark(phase);
  }
  kernels::Buffer<float> send_rows_;     // [S - own, H] rows for other ranks
  kernels::Buffer<float> recv_rows_;     // [R, H] other ranks' rows, then own rows
  kernels::Buffer<float> combine_rows_;  // [S - own + R, H] returned rows, then partial rows

  // Moves route entries (host vectors), staging through backend memory for device communicators.
  void exchange_routes(const std::vector<RouteEntry>& send, std::span<const int64_t> send_rows,
                       std::vector<RouteEntry>& recv, std::span<const int64_t> recv_rows);
  // Host scratch reused across layers.
  std::vector<int64_t> send_elems_, recv_elems_;
  std::vector<int64_t> remote_send_, remote_recv_;  // [N] row counts, own entry zero
  ExchangeScratch<float> row_scratch_;
  kernels::Buffer<RouteEntry> dev_send_routes_, dev_recv_routes_;
  std::vector<int64_t> partial_offsets_;
  std::vector<int32_t> partial_src_;
  std::vector<float> partial_weights_;
  std::vector<int32_t> final_src_;  // [S] combine_rows_ row of each token_rows entry
};

}  // namespace moe::parallel
