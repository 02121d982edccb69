// Expert-parallel token exchange for one MoE layer, the one path every backend runs: the layout
// (who goes where, deduplicated per destination rank) is computed in backend memory by the layout
// ops (kernels/common/moe_layout.h bodies: CUDA kernels on the GPU, loops on the CPU); dispatch
// sends every peer ONE message (header, rows in the wire type, route entries:
// kernels/common/moe_wire.h) and combine sends one message back, whose rows are added to the
// residual stream. parallel/dispatch_layout.h is the sequential specification of the layout.
//
// Buffer layouts on rank r (T own tokens, k = top_k, N ranks, C = capacity rows; "own" = rows
// rank r sends to itself, which never pass through the communicator):
//
//   send rows     [S]      S = sum_d send_counts[d]; for rank 0 first, then rank 1, ...; within a
//                          destination in ascending token order; a token appears ONCE per
//                          destination holding any of its experts (dedup). Packed straight from
//                          hidden into the send arena: slot d holds the first min(n_d, C) rows of
//                          d's message, the spill area the rest (moe_wire.h draws both).
//   recv arena             slots of every source, then their spills (second exchange, only when a
//                          sender's header says it has more than C rows for some rank).
//   recv rows     [R]      R = sum_s recv_counts[s], received order = source rank order (own block
//                          at its place). The experts read fp32 rows, and bf16 rows of even
//                          width, where they landed in the arena (own rows written after the
//                          spills in the wire type); fp8 rows are widened into [R, H] fp32 with
//                          the own block last. row_at[r] says where. bf16 dispatch on several
//                          ranks hands every row to the experts as a bf16 value
//                          (wire::receive_columns).
//   recv routes   [R, k]   RouteEntry per received row, received order.
//   expert in     row_index [P] -> row of the experts' input; grouped by local slot ascending.
//   expert out    [P, H]   one row per (recv row, route entry) pair, same order as row_index;
//                          the caller's, fp32 or bf16 (the compute dtype's).
//   partial out   [R - own, H]  (wire type) partial[r] = sum_j weight_j * expert_out[pair(r, j)] in
//                          route order, for the rows of other ranks, in received order: combine's
//                          one message back to each source. Own rows' partial sums are formed
//                          in the final sum, never stored.
//   returned      [S - own, H]  (wire type) rows back from the other ranks, send order.
//   x             [T, H]   x[t] += the sum of the rows of t in destination order (fp32).
//
// Collectives per MoE layer (several ranks): dispatch one fixed-block exchange (every pair, one
// message each way, no count round trip before it), one spill exchange only when some message
// outgrew C, combine one exchange. What the host waits for: the dispatch messages, then one small
// copy of the headers they carried (sizes of the spill, the received rows and the per-slot pair
// counts). One rank: nothing is exchanged; nothing is read on the host when the batch has at most
// kDeviceCountsMaxTokens tokens (the step can be captured as a device graph).
// Node-first exchange (ExchangeKind::kHierarchical, the default when the communicator spans
// several nodes): this dispatcher's tables route expert e to the proxy of each node holding it
// (the rank of this rank's local index there; the "slot" is e itself), so a token's row crosses
// to a node once; the proxy gathers what it received into node_rows [R1, H] (received order)
// and `inner_`, a flat dispatcher over the node communicator, dispatches those rows by the
// forwarded entries (kernels/common/moe_layout.h: negative ids route nowhere). Combine: the
// node level sums into node_sums [R1, H] (zeroed; the node's ranks in local rank order), then
// each received row goes back as one pair of weight 1 (exactly its sum) and the source adds the
// nodes' rows in node order. So x[t] += sum over nodes of (sum over that node's ranks), which
// differs from the flat order only in fp32 rounding (docs/numerics.md). 4 collectives per layer.
// Shared arena (every rank on one node, host memory; dispatcher_arena.cpp): the send slots are
// this rank's segment of Communicator::make_shared_arena, published instead of sent; the
// receiver reads every sender's slot where it lies (fp32 and bf16 rows: the experts' input in
// place, own rows written into this rank's own slot) and combine's partial rows are read in the
// expert rank's segment. A node-first proxy widens bf16 rows (it forwards fp32 rows). The spill
// still moves as messages, and so does the combine of a layer that spilled. Loads (LayerLoad) come
// from the same counters: collect_loads() downloads what the host has not already seen, once per
// step. Sums run in a fixed order with fp32 accumulation, so the result does not depend on how
// ranks split the work beyond the order stated above (and on the wire type of the partial rows:
// fp32 rows give the bits of an fp32 sum, docs/numerics.md).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/moe_wire.h"
#include "parallel/communicator.h"
#include "parallel/dispatch_layout.h"
#include "parallel/exchange.h"
#include "parallel/load_stats.h"
#include "parallel/placement.h"
#include "parallel/routing_tables.h"

namespace moe::parallel {

// The wire types of both directions.
struct WirePlan {
  kernels::WireDtype dispatch = kernels::WireDtype::kF32;
  kernels::WireDtype combine = kernels::WireDtype::kF32;
};
// Rows travel in the activation dtype unless `requested` says otherwise: fp32 (both directions
// fp32, any compute), bf16 or fp8 (dispatch; combine bf16), which need bf16 compute. Throws
// moe::Error("config") naming the combination otherwise.
WirePlan resolve_wire(kernels::ComputeDtype compute, std::optional<kernels::WireDtype> requested);

// How rows reach the ranks of other nodes. kFlat: straight to every destination rank, one row
// per (token, rank). kHierarchical (node-first): one row per (token, destination node) crosses to
// the rank of the sender's local index there (the proxy), which forwards it inside its node, and
// the combine sums inside the node before the one row goes back.
enum class ExchangeKind { kFlat, kHierarchical };
const char* exchange_kind_name(ExchangeKind kind);

struct DispatcherOptions {
  std::optional<kernels::WireDtype> wire;  // unset: the activation dtype (resolve_wire)
  // Unset: hierarchical when the communicator spans several nodes, else flat.
  std::optional<ExchangeKind> exchange;
  // Rows per peer in the fixed-capacity message (the same on every rank); 0: kSharedCapacityRows
  // over a shared arena (every rank on one node), else kHostCapacityRows for a communicator that
  // sends only what is used (MPI), kDeviceCapacityRows for one that moves whole blocks (NCCL).
  int32_t capacity_rows = 0;
  // Use the communicator's shared arena (Communicator::make_shared_arena) when it has one and the
  // backend keeps tensors in host memory; false: always the messages.
  bool shared_memory = true;
};

// What dispatch hands to expert compute and to combine. Pointers into the dispatcher's buffers
// (backend memory): valid until its next dispatch.
struct DispatchHandle {
  DispatchHandle() = default;
  DispatchHandle(const DispatchHandle&) = delete;  // experts.host_slot_begin points into it
  DispatchHandle& operator=(const DispatchHandle&) = delete;
  DispatchHandle(DispatchHandle&&) = default;
  DispatchHandle& operator=(DispatchHandle&&) = default;

  int layer = -1;
  kernels::ExpertBatch experts;  // the pairs by local slot (slot weights filled by the caller)
  // expert_swiglu's input (rows at experts.row_index): x, or x_bf16 when the rows stayed bf16
  // (exactly one is set once rows were received).
  const float* recv_rows = nullptr;
  const bf16* recv_rows_bf16 = nullptr;
  int64_t num_recv_rows = 0;
  int64_t num_tokens = 0;
  // Host copy of slot_begin when the host has the counts, else empty (experts.host_slot_begin
  // points here).
  std::vector<int32_t> host_slot_begin;
  // Combine's part.
  std::vector<int64_t> send_counts, recv_counts;  // [N] rows (host; several ranks only)
  int32_t own_send_begin = 0, own_recv_begin = 0, own_rows = 0;
  bool combine_in_arena = false;  // the combine goes through the shared arena (no spill this layer)
  const kernels::RouteEntry* recv_routes = nullptr;  // [R * k] received order
  const int32_t* pair_of_entry = nullptr;            // [R * k]
  const int32_t* token_offsets = nullptr;            // [T + 1]
  const int32_t* token_rows = nullptr;               // [S]
  const int32_t* row_at = nullptr;  // [R] where received row r lies in recv_rows (several ranks)
};

class Dispatcher {
 public:
  // Batches of at most this many tokens keep the slot counts on the device on one rank.
  static constexpr int64_t kDeviceCountsMaxTokens = 64;
  static constexpr int32_t kHostCapacityRows = 256;
  // A shared arena's slots cost address space only (pages nobody writes take no memory), so they
  // are large enough that prefill batches rarely spill.
  static constexpr int32_t kSharedCapacityRows = 1024;
  static constexpr int32_t kDeviceCapacityRows = 64;

  Dispatcher(Communicator& comm, kernels::Backend& backend, int64_t hidden, int top_k,
             const DispatcherOptions& options = {});

  // Uploads the routing table of every MoE layer of `placement` (once per placement).
  void set_placement(const Placement& placement);
  // Forgets the counters of the previous step.
  void begin_step();
  // Marks the layout, dispatch and combine phases on `timer` (not owned; nullptr: no marks).
  void set_timer(kernels::PhaseTimer* timer, int layout_phase, int dispatch_phase,
                 int combine_phase);
  const WirePlan& wire() const { return wire_; }
  int32_t capacity_rows() const { return capacity_; }
  ExchangeKind exchange() const {
    return inner_ != nullptr ? ExchangeKind::kHierarchical : ExchangeKind::kFlat;
  }
  // True once the exchanges go through a shared arena (after the first dispatch on several ranks).
  bool uses_shared_arena() const { return arena_ != nullptr; }

  // ids / weights: [num_tokens, k] in backend memory. hidden: [num_tokens, H]; hidden_bf16, if
  // the caller has it (bf16 compute does): the same rows rounded to bf16, from which bf16 rows
  // are copied instead of converted (the same bits). Collective: every rank calls it, with
  // num_tokens == 0 allowed. dispatch() = start_dispatch() + finish_dispatch(): between the two
  // the messages are in flight and the caller may compute (hidden, hidden_bf16, ids and weights
  // stay untouched until finish_dispatch returns).
  DispatchHandle dispatch(int layer, const float* hidden, int64_t num_tokens, const int32_t* ids,
                          const float* weights, const bf16* hidden_bf16 = nullptr);
  void start_dispatch(int layer, const float* hidden, int64_t num_tokens, const int32_t* ids,
                      const float* weights, const bf16* hidden_bf16 = nullptr);
  DispatchHandle finish_dispatch();
  // x [num_tokens, H] += the combined expert output. expert_out: [P, H], fp32 or bf16 (a float*
  // or bf16* converts; bf16 from experts computing in bf16, which round their output to it).
  // Collective. combine() = start_combine() + finish_combine() (expert_out stays untouched in
  // between).
  void combine(kernels::layout::ExpertRows expert_out, const DispatchHandle& d, float* x);
  void start_combine(kernels::layout::ExpertRows expert_out, const DispatchHandle& d);
  void finish_combine(const DispatchHandle& d, float* x);

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
  static constexpr int kDispatchCounter = 0, kCombineCounter = 1;  // of the SharedArena
  struct LayerTable {
    kernels::Buffer<int32_t> data;  // replica_begin | replica_rank | replica_slot | rank_num_slots
    kernels::RoutingTable table;
    int32_t local_slots = 0;  // this rank's
  };
  // The dispatch in flight between start_dispatch() and finish_dispatch().
  struct InFlight {
    int layer = -1;
    const float* hidden = nullptr;
    const bf16* hidden_bf16 = nullptr;
    int64_t num_tokens = 0;
    kernels::layout::SourceLayoutView view;
    bool own_packed = false;  // the pack wrote the own rows into the own slot
  };
  // Per-layer counters in one buffer, so one download covers a step:
  //   [expert_total E][send header N W][recv header N W][layout error][grouping error]
  // The tables of every layer (empty arrays: a dense layer), E experts.
  void set_routing(const std::vector<RoutingArrays>& layers, int num_experts);
  // The node-first exchange's second level: the dispatch of the rows this node received
  // (`rows` [R, H], received order), with their forwarded route entries.
  void start_forwarded(int layer, const float* rows, int64_t num_rows,
                       const kernels::RouteEntry* routes);
  // Node-first: the rows the first level received go to the node's ranks; returns their handle.
  DispatchHandle forward_in_node(DispatchHandle&& received);
  // Node-first: the node level's loads and traffic folded into the first level's `loads`.
  void add_node_level(const std::vector<LayerLoad>& in_node, std::vector<LayerLoad>& loads) const;
  // The combine of one level: expert_out [pairs of d, H] summed per row and sent back / added.
  void start_combine_rows(kernels::layout::ExpertRows expert_out, const DispatchHandle& d);
  void finish_combine_rows(const DispatchHandle& d, float* x);
  int64_t block_ints() const;
  int32_t* block(int layer) { return stats_.data() + layer * block_ints(); }
  // Throws on the error flags of a host copy of a layer's block (the grouping's only once the
  // grouping has run).
  void check_block(int layer, const int32_t* host_block, bool grouping_done) const;
  kernels::wire::MessageFormat dispatch_format() const;
  // Whether rows in format f can be the experts' input where they land (fp32 rows, bf16 rows of
  // even width; a node-first proxy forwards fp32 rows, so it widens bf16).
  bool rows_read_in_place(const kernels::wire::MessageFormat& f) const;
  // The shared arena's segment: the dispatch slots (one per destination, as the send arena's),
  // then the combine area: a table of where each source's partial rows start, then the rows.
  int64_t arena_combine_at() const;
  int64_t arena_segment_bytes() const;
  // Creates (collectively) the arena when the options allow one and it is missing or sized for
  // another format; the communicator may have none.
  void ensure_arena();
  void start_combine_in_arena(const DispatchHandle& d);
  // combine_partial of the rows other ranks sent (received order, own rows skipped) into out.
  void write_partial_rows(const DispatchHandle& d, unsigned char* out);
  // Byte offsets of the returned rows in the peers' combine areas (from segment 0).
  const int64_t* returned_offsets(const DispatchHandle& d);
  // Steps of a dispatch: the source-side layout of `layer` into source_ints_ / send_routes_; the
  // messages packed and sent; the headers they carried read on the host; the spill; the received
  // rows and routes; the receiver-side grouping by local slot.
  kernels::layout::SourceLayoutView source_layout(int layer, int32_t num_tokens, const int32_t* ids,
                                                  const float* weights,
                                                  const kernels::RouteEntry* forwarded = nullptr);
  void send_messages(int layer);
  void read_headers(int layer, DispatchHandle& d);
  void exchange_spill(const DispatchHandle& d);
  void receive(DispatchHandle& d);
  void group_received(int layer, DispatchHandle& d, const int32_t* row_at);
  // The one-rank dispatch: token t is row t, nothing moves.
  void keep_local(int layer, DispatchHandle& d);
  void mark(int phase) {
    if (timer_ != nullptr) timer_->mark(phase);
  }

  Communicator& comm_;
  kernels::Backend& backend_;
  int64_t hidden_;
  int top_k_;
  WirePlan wire_;
  int32_t capacity_ = 0;
  int num_experts_ = 0;
  int header_width_ = 0;
  std::vector<LayerTable> tables_;                 // [layers]; empty data for dense layers
  kernels::Buffer<int32_t> stats_;                 // [layers * block_ints()]
  std::vector<std::vector<int32_t>> host_blocks_;  // [layers] blocks the host already has
  std::vector<char> dispatched_;                   // [layers] this step
  std::vector<int32_t> collectives_;               // [layers] exchanges entered this step
  kernels::PhaseTimer* timer_ = nullptr;
  int layout_phase_ = 0, dispatch_phase_ = 0, combine_phase_ = 0;
  InFlight flight_;
  const kernels::RouteEntry* forwarded_ = nullptr;  // start_forwarded's routes for start_dispatch
  kernels::layout::ExpertRows expert_out_;          // of the combine in flight
  bool arena_wanted_ = true;
  std::shared_ptr<SharedArena> arena_;
  uint64_t dispatch_seq_ = 0, combine_seq_ = 0;  // values published so far (same on every rank)

  // Scratch reused across layers (grown, never shrunk; the receive arena keeps its contents when
  // it grows).
  kernels::Buffer<int32_t> source_ints_, recv_ints_, group_ints_;
  kernels::Buffer<kernels::RouteEntry> send_routes_, recv_routes_;
  kernels::Buffer<unsigned char> send_arena_, recv_arena_, partial_, returned_;
  kernels::Buffer<float> recv_rows_;  // widened rows (rows not read in place)
  kernels::Buffer<int64_t> returned_at_;
  std::vector<int64_t> host_returned_at_;
  std::vector<int64_t> send_bytes_, spill_send_, spill_recv_, back_send_, back_recv_;
  ByteExchange messages_, spill_, back_;

  // Node-first exchange (kHierarchical on several ranks): this dispatcher sends to the node
  // proxies and `inner_`, over the node communicator, delivers inside the node.
  std::unique_ptr<Dispatcher> inner_;
  DispatchHandle received_;  // the first level's handle of the layer in flight
  // The node's rows in received order (inner_'s tokens), and their sums coming back from it.
  kernels::Buffer<float> node_rows_, node_sums_;
  // Each received row as one pair of weight 1 (entry 0 -> pair r): the first level's combine
  // then sends node_sums_ rows back unchanged.
  kernels::Buffer<kernels::RouteEntry> unit_routes_;
  kernels::Buffer<int32_t> unit_pairs_;
  int64_t unit_rows_ = 0;
};

}  // namespace moe::parallel
