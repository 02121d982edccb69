// Expert-parallel token exchange for one MoE layer, the one path every backend runs: the layout
// (who goes where, deduplicated per destination rank) is computed in backend memory by the layout
// ops (kernels/common/moe_layout.h bodies: CUDA kernels on the GPU, loops on the CPU), then
// dispatch moves hidden rows + route entries to the ranks holding their experts and combine brings
// the expert outputs back and adds them to the residual stream. parallel/dispatch_layout.h is the
// sequential specification of the same layout.
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
//   x           [T, H]   x[t] += sum of the rows of t in destination order (fp32).
//
// What the host waits for, per MoE layer:
//   one rank: nothing when the batch has at most kDeviceCountsMaxTokens tokens (the expert op
//     reads the slot counts on the device; the step can be captured as a device graph); else one
//     small copy of the slot counts (cuBLAS's grouped GEMM takes its sizes on the host). The
//     communicator is not used at all.
//   several ranks: one header exchange, then one small copy of this rank's counters (the header it
//     sent and the headers it received: rows and per-slot pairs per rank), which size the
//     variable exchanges.
// Loads (LayerLoad) come from the same counters: collect_loads() downloads what the host has not
// already seen, once per step. Sums run in a fixed order with fp32 accumulation, so the result
// does not depend on how ranks split the work beyond the order stated above.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/dispatch_layout.h"
#include "parallel/exchange.h"
#include "parallel/load_stats.h"
#include "parallel/placement.h"

namespace moe::parallel {

// What dispatch hands to expert compute and to combine. Pointers into the dispatcher's buffers
// (backend memory): valid until its next dispatch().
struct DispatchHandle {
  DispatchHandle() = default;
  DispatchHandle(const DispatchHandle&) = delete;  // experts.host_slot_begin points into it
  DispatchHandle& operator=(const DispatchHandle&) = delete;
  DispatchHandle(DispatchHandle&&) = default;
  DispatchHandle& operator=(DispatchHandle&&) = default;

  kernels::ExpertBatch experts;      // the pairs by local slot (slot weights filled by the caller)
  const float* recv_rows = nullptr;  // [R, H], own rows last: expert_swiglu's x
  int64_t num_recv_rows = 0;
  int64_t num_tokens = 0;
  // Host copy of slot_begin when the host has the counts, else empty (experts.host_slot_begin
  // points here).
  std::vector<int32_t> host_slot_begin;
  // Combine's part.
  std::vector<int64_t> send_counts, recv_counts;  // [N] rows (host; several ranks only)
  int32_t own_send_begin = 0, own_recv_begin = 0, own_rows = 0;
  const kernels::RouteEntry* recv_routes = nullptr;  // [R * k] received order
  const int32_t* pair_of_entry = nullptr;            // [R * k]
  const int32_t* token_offsets = nullptr;            // [T + 1]
  const int32_t* token_rows = nullptr;               // [S]
};

class Dispatcher {
 public:
  // Batches of at most this many tokens keep the slot counts on the device on one rank.
  static constexpr int64_t kDeviceCountsMaxTokens = 64;

  Dispatcher(Communicator& comm, kernels::Backend& backend, int64_t hidden, int top_k);

  // Uploads the routing table of every MoE layer of `placement` (once per placement).
  void set_placement(const Placement& placement);
  // Forgets the counters of the previous step.
  void begin_step();
  // Marks the layout, dispatch and combine phases on `timer` (not owned; nullptr: no marks).
  void set_timer(kernels::PhaseTimer* timer, int layout_phase, int dispatch_phase,
                 int combine_phase);

  // ids / weights: [num_tokens, k] in backend memory. hidden: [num_tokens, H]. Collective: every
  // rank calls it, with num_tokens == 0 allowed.
  DispatchHandle dispatch(int layer, const float* hidden, int64_t num_tokens, const int32_t* ids,
                          const float* weights);
  // x [num_tokens, H] += the combined expert output. expert_out: [P, H]. Collective.
  void combine(const float* expert_out, const DispatchHandle& d, float* x);

  // Every MoE layer ran as part of a replayed device graph this step (the host code of
  // dispatch() did not run, the device wrote the counters): collect_loads() reads them all.
  void note_replayed();
  // Addresses of the buffers a dispatch reads and writes (a captured graph is valid while they
  // stay put).
  std::vector<const void*> buffers() const;

  // This rank's load of every layer dispatched since begin_step() (others: empty). Throws if
  // a layout reported bad input (an expert id outside the model, e.g. from non-finite logits).
  std::vector<LayerLoad> collect_loads();

 private:
  struct LayerTable {
    kernels::Buffer<int32_t> data;  // replica_begin | replica_rank | replica_slot | rank_num_slots
    kernels::RoutingTable table;
    int32_t local_slots = 0;  // this rank's
  };
  // Per-layer counters in one buffer, so one download covers a step:
  //   [expert_total E][send header N W][recv header N W][layout error][grouping error]
  int64_t block_ints() const;
  int32_t* block(int layer) { return stats_.data() + layer * block_ints(); }
  // Throws on the error flags of a host copy of a layer's block (the grouping's only once the
  // grouping has run).
  void check_block(int layer, const int32_t* host_block, bool grouping_done) const;
  // Steps of dispatch(): the source-side layout of `layer` into source_ints_ / send_routes_;
  // the header exchange that tells every rank its counts; the row and route payload; the
  // receiver-side grouping by local slot.
  kernels::layout::SourceLayoutView source_layout(int layer, int32_t num_tokens, const int32_t* ids,
                                                  const float* weights);
  void exchange_counts(int layer, DispatchHandle& d);
  void exchange_payload(const float* hidden, const int32_t* send_token, DispatchHandle& d);
  void group_received(int layer, DispatchHandle& d);
  // remote_send_ / remote_recv_: d's row counts with this rank's own entry zero (what the
  // communicator moves; own rows stay in place).
  void set_remote_counts(const DispatchHandle& d);
  void mark(int phase) {
    if (timer_ != nullptr) timer_->mark(phase);
  }

  Communicator& comm_;
  kernels::Backend& backend_;
  int64_t hidden_;
  int top_k_;
  int num_experts_ = 0;
  int header_width_ = 0;
  std::vector<LayerTable> tables_;                 // [layers]; empty data for dense layers
  kernels::Buffer<int32_t> stats_;                 // [layers * block_ints()]
  std::vector<std::vector<int32_t>> host_blocks_;  // [layers] blocks the host already has
  std::vector<char> dispatched_;                   // [layers] this step
  kernels::PhaseTimer* timer_ = nullptr;
  int layout_phase_ = 0, dispatch_phase_ = 0, combine_phase_ = 0;

  // Scratch reused across layers (grown, never shrunk).
  kernels::Buffer<int32_t> source_ints_, recv_ints_;
  kernels::Buffer<kernels::RouteEntry> send_routes_, recv_routes_;
  kernels::Buffer<float> send_rows_, recv_rows_, partial_, returned_;
  std::vector<int64_t> remote_send_, remote_recv_;
  ExchangeScratch<float> row_scratch_;
  ExchangeScratch<kernels::RouteEntry> route_scratch_;
};

}  // namespace moe::parallel
