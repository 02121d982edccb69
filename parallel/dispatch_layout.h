// The expert-parallel layout of one MoE layer as plain sequential functions: which rows a rank
// sends where (deduplicated per destination), how received rows group by local slot, and the
// traffic that implies. This is the specification: the runtime computes the same layout with the
// per-thread bodies of kernels/common/moe_layout.h (tests hold it field by field against these
// functions), and the placement analysis and the cost model replay routings through them.
// Buffer orders are drawn in parallel/dispatcher.h.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/common/moe_wire.h"
#include "kernels/op_args.h"
#include "parallel/node_layout.h"
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
struct SlotGroups {
  std::vector<int32_t> row_index;      // [P] recv row of each pair
  std::vector<int64_t> slot_begin;     // [num_local_slots + 1] range of each slot in row_index
  std::vector<int32_t> pair_of_entry;  // [R * k] pair index of each route entry, -1 if unused

  int64_t num_pairs() const { return static_cast<int64_t>(row_index.size()); }
};
SlotGroups group_by_slot(std::span<const RouteEntry> recv_routes, int64_t num_recv_rows, int top_k,
                         int num_local_slots);

// Bytes of one exchanged row on the wire (kernels/common/moe_wire.h).
struct WireBytes {
  int64_t dispatch_row = 0;  // a row out: its elements (and fp8 scales)
  int64_t routes = 0;        // its k route entries, which travel with it
  int64_t combine_row = 0;   // a row back
  static WireBytes of(kernels::WireDtype dispatch, kernels::WireDtype combine, int64_t hidden,
                      int top_k);
};

// Per-layer traffic of one dispatch+combine on this rank. bytes_remote_without_dedup counts, per
// remote (token, expert) pair, one row plus one RouteEntry going out and one row coming back, in
// the same wire types: what an exchange without dedup would move.
struct ExchangeStats {
  int64_t rows_sent_remote = 0;  // rows to other ranks
  int64_t rows_kept_local = 0;   // rows to this rank
  int64_t pairs_remote = 0;      // (token, expert) pairs to other ranks (no-dedup row count)
  int64_t rows_received = 0;
  int64_t bytes_sent_remote = 0;  // dispatch + combine payload to other ranks (rows + routes)
  int64_t bytes_kept_local = 0;
  int64_t bytes_remote_without_dedup = 0;  // same traffic at one row per (token, expert)
  int64_t pairs_received = 0;         // (row, expert) pairs computed on this rank (all sources)
  int64_t row_bytes_sent_remote = 0;  // the rows' part of bytes_sent_remote (no route entries)
  int64_t collectives = 0;            // exchanges this rank entered (dispatch and combine)
  // The part of the remote traffic whose peer is on another node (rows out; rows and routes out
  // plus rows back).
  int64_t rows_sent_inter_node = 0;
  int64_t bytes_sent_inter_node = 0;

  // Accumulates counters (e.g. over the layers and steps of a run).
  ExchangeStats& operator+=(const ExchangeStats& o);
};

// The traffic counters of one dispatch+combine on `rank`, from the rows and (token, expert)
// pairs it sends to each rank and receives from each rank ([N] each), in the wire types of
// `bytes` (collectives stay 0: the exchange counts them). `nodes` says which peers are on other
// nodes (nullptr: all on this rank's node).
ExchangeStats exchange_stats(int rank, std::span<const int64_t> send_rows,
                             std::span<const int64_t> send_pairs,
                             std::span<const int64_t> recv_rows,
                             std::span<const int64_t> recv_pairs, const WireBytes& bytes,
                             const NodeLayout* nodes = nullptr);

}  // namespace moe::parallel
