// Expert-parallel exchange with the routing kept in backend memory ("routing on the device"):
// the same layout, exchange and combine as Dispatcher (dispatcher.h draws the buffer layouts;
// they are the same here), but the layout is computed by backend ops
// (kernels/common/moe_layout.h) from top-k ids and weights that never leave the device.
//
// What the host waits for, per MoE layer:
//   one rank: nothing when the batch has at most kDeviceCountsMaxTokens tokens (the expert
//     kernel reads the slot counts on the device; the step can be captured as a CUDA graph);
//     else one small copy of the slot counts (cuBLAS's grouped GEMM takes its sizes on the host).
//     The communicator is not used at all.
//   several ranks: one small copy of this rank's counters (the header it sent and the headers it
//     received: rows and per-slot pairs per rank), which sizes the variable exchanges.
// Loads (LayerLoad) come from the same counters: collect_loads() downloads what the host has not
// already seen, once per step.
//
// The numerics are the host path's: the same pairs in the same order, the same fp32 sums in the
// same order, so on the CPU backend the logits are bit-identical to Dispatcher's (tested).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "parallel/load_stats.h"
#include "parallel/placement.h"

namespace moe::parallel {

// What dispatch hands to expert compute and to combine_add. Pointers into the dispatcher's
// buffers (backend memory): valid until its next dispatch().
struct ResidentDispatch {
  const float* recv_rows = nullptr;  // [R, H], own rows last
  int64_t num_recv_rows = 0;
  int64_t num_tokens = 0;
  const int32_t* row_index = nullptr;   // [max_pairs] memory row of each pair
  const int32_t* slot_begin = nullptr;  // [num_slots + 1]
  int64_t num_slots = 0;
  int64_t max_pairs = 0;
  // Host copy of slot_begin when the host has the counts, else empty.
  std::vector<int32_t> host_slot_begin;
  // Combine's handle.
  std::vector<int64_t> send_counts, recv_counts;  // [N] rows (host; several ranks only)
  int32_t own_send_begin = 0, own_recv_begin = 0, own_rows = 0;
  const kernels::RouteEntry* recv_routes = nullptr;  // [R * k] received order
  const int32_t* pair_of_entry = nullptr;            // [R * k]
  const int32_t* token_offsets = nullptr;            // [T + 1]
  const int32_t* token_rows = nullptr;               // [S]
};

class ResidentDispatcher {
 public:
  // Batches of at most this many tokens keep the slot counts on the device on one rank.
  static constexpr int64_t kDeviceCountsMaxTokens = 64;

  ResidentDispatcher(Communicator& comm, kernels::Backend& backend, int64_t hidden, int top_k);

  // Uploads the routing table of every MoE layer of `placement` (once per placement).
  void set_placement(const Placement& placement);
  // Forgets the counters of the previous step.
  void begin_step();

  // ids / weights: [num_tokens, k] in backend memory. hidden: [num_tokens, H]. Collective.
  ResidentDispatch dispatch(int layer, const float* hidden, int64_t num_tokens, const int32_t* ids,
                            const float* weights);
  // x [num_tokens, H] += the combined expert output. expert_out: [P, H]. Collective.
  void combine_add(const float* expert_out, const ResidentDispatch& d, float* x);

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

  // Scratch reused across layers (grown, never shrunk).
  kernels::Buffer<int32_t> source_ints_, recv_ints_;
  kernels::Buffer<kernels::RouteEntry> send_routes_, recv_routes_;
  kernels::Buffer<float> send_rows_, recv_rows_, partial_, returned_;
  std::vector<int64_t> remote_send_, remote_recv_;
  ExchangeScratch<float> row_scratch_;
  ExchangeScratch<kernels::RouteEntry> route_scratch_;
};

}  // namespace moe::parallel
