// Dispatcher: the expert-parallel exchange of one MoE layer with its layout computed in backend
// memory (dispatcher.h draws the buffers and says what the host waits for). The shared-arena
// parts (segment layout, combine through the arena) are dispatcher_arena.cpp.
#include "parallel/dispatcher.h"

#include <algorithm>
#include <climits>
#include <memory>

#include "kernels/common/check.h"

namespace moe::parallel {
namespace {

namespace layout = kernels::layout;
namespace wire = kernels::wire;
using kernels::WireDtype;

int64_t sum(std::span<const int64_t> v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// Carves int32 arrays out of one buffer: offsets first (add), pointers once it is allocated.
class IntCarver {
 public:
  size_t add(int64_t count) {
    const size_t at = total_;
    total_ += static_cast<size_t>(std::max<int64_t>(count, 0) + 3) & ~size_t{3};  // 16 bytes
    return at;
  }
  size_t total() const { return std::max<size_t>(total_, 1); }

 private:
  size_t total_ = 0;
};

// Grows `buf` to `size` bytes keeping its first `keep` bytes.
void grow_keeping(kernels::Backend& backend, kernels::Buffer<unsigned char>& buf, size_t size,
                  size_t keep) {
  if (size <= buf.size()) return;
  kernels::Buffer<unsigned char> bigger(backend, size);
  if (keep > 0) backend.copy(bigger.data(), buf.data(), keep);
  buf = std::move(bigger);
}

}  // namespace

const char* exchange_kind_name(ExchangeKind kind) {
  return kind == ExchangeKind::kHierarchical ? "hierarchical" : "flat";
}

WirePlan resolve_wire(kernels::ComputeDtype compute, std::optional<WireDtype> requested) {
  const bool bf16 = compute == kernels::ComputeDtype::kBF16;
  if (!requested) return bf16 ? WirePlan{WireDtype::kBF16, WireDtype::kBF16} : WirePlan{};
  if (*requested == WireDtype::kF32) return WirePlan{};
  MOE_CHECK_AS("config", bf16,
               "--dispatch-dtype {} needs --compute-dtype bf16: in fp32 compute the rows travel "
               "as fp32, so that the logits stay those of an fp32 run",
               kernels::wire_dtype_name(*requested));
  return WirePlan{*requested, WireDtype::kBF16};
}

Dispatcher::Dispatcher(Communicator& comm, kernels::Backend& backend, int64_t hidden, int top_k,
                       const DispatcherOptions& options)
    : comm_(comm),
      backend_(backend),
      hidden_(hidden),
      top_k_(top_k),
      wire_(resolve_wire(backend.compute_dtype(), options.wire)) {
  MOE_CHECK_AS("dispatch", hidden_ >= 1 && top_k_ >= 1,
               "dispatcher needs hidden >= 1 and top_k >= 1 (got {}, {})", hidden_, top_k_);
  MOE_CHECK_AS("dispatch", !comm_.device_buffers() || !backend_.is_host_memory(),
               "communicator {} moves device buffers but backend {} keeps tensors in host memory",
               comm_.name(), backend_.name());
  MOE_CHECK_AS("dispatch", options.capacity_rows >= 0, "capacity of {} rows per peer",
               options.capacity_rows);
  arena_wanted_ = options.shared_memory && comm_.size() > 1 && !comm_.device_buffers() &&
                  backend_.is_host_memory();
  // The same on every rank: the node layout is.
  const bool one_node = arena_wanted_ && comm_.node_layout().num_nodes == 1;
  capacity_ = options.capacity_rows > 0 ? options.capacity_rows
              : comm_.device_buffers()  ? kDeviceCapacityRows
              : one_node                ? kSharedCapacityRows
                                        : kHostCapacityRows;
  const ExchangeKind kind = options.exchange.value_or(
      comm_.node_layout().num_nodes > 1 ? ExchangeKind::kHierarchical : ExchangeKind::kFlat);
  if (kind == ExchangeKind::kHierarchical && comm_.size() > 1) {
    DispatcherOptions in_node = options;
    in_node.exchange = ExchangeKind::kFlat;
    inner_ =
        std::make_unique<Dispatcher>(comm_.node_communicator(), backend_, hidden_, top_k_, in_node);
  }
}

int64_t Dispatcher::block_ints() const {
  return num_experts_ + 2 * static_cast<int64_t>(comm_.size()) * header_width_ + 2;
}

void Dispatcher::begin_step() {
  backend_.fill_zero(stats_.data(), stats_.size_bytes());  // error flags and unused counters
  std::fill(dispatched_.begin(), dispatched_.end(), 0);
  std::fill(collectives_.begin(), collectives_.end(), 0);
  for (auto& b : host_blocks_) b.clear();
  if (inner_ != nullptr) inner_->begin_step();
}

void Dispatcher::note_replayed() {
  for (size_t l = 0; l < tables_.size(); ++l) dispatched_[l] = tables_[l].data.size() > 0;
  if (inner_ != nullptr) inner_->note_replayed();
}

std::vector<const void*> Dispatcher::buffers() const {
  std::vector<const void*> b = {stats_.data(),      source_ints_.data(), recv_ints_.data(),
                                group_ints_.data(), send_routes_.data(), recv_routes_.data(),
                                send_arena_.data(), recv_arena_.data(),  partial_.data(),
                                returned_.data(),   recv_rows_.data()};
  if (inner_ != nullptr) {
    for (const void* p : inner_->buffers()) b.push_back(p);
    for (const void* p :
         {static_cast<const void*>(node_rows_.data()), static_cast<const void*>(node_sums_.data()),
          static_cast<const void*>(unit_routes_.data()),
          static_cast<const void*>(unit_pairs_.data())}) {
      b.push_back(p);
    }
  }
  return b;
}

void Dispatcher::check_block(int layer, const int32_t* host_block, bool grouping_done) const {
  const int32_t* err = host_block + num_experts_ + 2 * comm_.size() * header_width_;
  MOE_CHECK_AS("dispatch", err[0] == 0,
               "layer {}: a token is routed to an expert outside [0, {}) (pair {}; non-finite "
               "router logits give id -1)",
               layer, num_experts_, err[0] - 1);
  MOE_CHECK_AS("dispatch", !grouping_done || err[1] == 0,
               "layer {}: a received row names a local slot this rank does not have (entry {})",
               layer, err[1] - 1);
}

void Dispatcher::set_timer(kernels::PhaseTimer* timer, int layout_phase, int dispatch_phase,
                           int combine_phase) {
  timer_ = timer;
  layout_phase_ = layout_phase;
  dispatch_phase_ = dispatch_phase;
  combine_phase_ = combine_phase;
  if (inner_ != nullptr) inner_->set_timer(timer, layout_phase, dispatch_phase, combine_phase);
}

bool Dispatcher::rows_read_in_place(const wire::MessageFormat& f) const {
  return wire::rows_in_place(f) && (f.dtype == WireDtype::kF32 || inner_ == nullptr);
}

wire::MessageFormat Dispatcher::dispatch_format() const {
  return wire::message_format(wire_.dispatch, hidden_, top_k_, header_width_, capacity_);
}

layout::SourceLayoutView Dispatcher::source_layout(int layer, int32_t T, const int32_t* ids,
                                                   const float* weights,
                                                   const kernels::RouteEntry* forwarded) {
  const int32_t N = comm_.size(), k = top_k_, E = num_experts_, W = header_width_;
  const int32_t chunk = backend_.traits().layout_chunk;
  const int32_t C = layout::num_chunks(T, chunk);
  const int32_t max_rows = T * std::min(k, N);
  IntCarver carve;
  const size_t chunk_expert = carve.add(static_cast<int64_t>(C) * E);
  const size_t chunk_dest = carve.add(static_cast<int64_t>(C) * N);
  const size_t chunk_rows = carve.add(C);
  const size_t pair_before = carve.add(T * k);
  const size_t pair_dest = carve.add(T * k), pair_slot = carve.add(T * k);
  const size_t token_ndest = carve.add(T), token_dest = carve.add(T * k);
  const size_t token_rows_before = carve.add(T), token_dest_before = carve.add(T * k);
  const size_t send_offsets = carve.add(N + 1);
  const size_t send_token = carve.add(max_rows);
  const size_t token_offsets = carve.add(T + 1);
  const size_t token_rows = carve.add(max_rows);
  source_ints_.ensure(backend_, carve.total());
  send_routes_.ensure(backend_, static_cast<size_t>(std::max(max_rows * k, 1)));
  int32_t* si = source_ints_.data();
  int32_t* blk = block(layer);

  layout::SourceLayoutView v;
  v.ids = ids;
  v.weights = weights;
  v.forwarded = forwarded;
  v.num_tokens = T;
  v.top_k = k;
  v.chunk_size = chunk;
  v.table = tables_[static_cast<size_t>(layer)].table;
  v.chunk_expert = si + chunk_expert;
  v.chunk_dest = si + chunk_dest;
  v.chunk_rows = si + chunk_rows;
  v.pair_before = si + pair_before;
  v.pair_dest = si + pair_dest;
  v.pair_slot = si + pair_slot;
  v.token_ndest = si + token_ndest;
  v.token_dest = si + token_dest;
  v.token_rows_before = si + token_rows_before;
  v.token_dest_before = si + token_dest_before;
  v.expert_total = blk;
  v.header = blk + E;
  v.send_offsets = si + send_offsets;
  v.send_token = si + send_token;
  v.send_routes = send_routes_.data();
  v.token_offsets = si + token_offsets;
  v.token_rows = si + token_rows;
  v.error = blk + E + 2 * N * W;
  backend_.dispatch_layout(v);
  return v;
}

DispatchHandle Dispatcher::dispatch(int layer, const float* hidden, int64_t num_tokens,
                                    const int32_t* ids, const float* weights,
                                    const bf16* hidden_bf16) {
  start_dispatch(layer, hidden, num_tokens, ids, weights, hidden_bf16);
  return finish_dispatch();
}

void Dispatcher::start_dispatch(int layer, const float* hidden, int64_t num_tokens,
                                const int32_t* ids, const float* weights, const bf16* hidden_bf16) {
  const int N = comm_.size();
  MOE_CHECK_AS("dispatch", flight_.layer < 0, "dispatch of layer {} started before layer {} ended",
               layer, flight_.layer);
  MOE_CHECK_AS("dispatch",
               layer >= 0 && layer < static_cast<int>(tables_.size()) &&
                   tables_[static_cast<size_t>(layer)].data.size() > 0,
               "dispatch: layer {} has no routing table (dense layer, or set_placement not called)",
               layer);
  MOE_CHECK_AS("dispatch", num_tokens >= 0 && num_tokens * top_k_ * N < INT32_MAX,
               "dispatch: {} tokens x top-{} is outside the supported range", num_tokens, top_k_);
  MOE_CHECK_AS("dispatch", num_tokens == 0 || hidden != nullptr,
               "dispatch: {} tokens but no hidden states", num_tokens);
  dispatched_[static_cast<size_t>(layer)] = 1;
  flight_.layer = layer;
  flight_.hidden = hidden;
  flight_.hidden_bf16 = hidden_bf16;
  flight_.num_tokens = num_tokens;
  flight_.view = source_layout(layer, static_cast<int32_t>(num_tokens), ids, weights, forwarded_);
  forwarded_ = nullptr;
  mark(layout_phase_);
  if (N > 1) send_messages(layer);
}

DispatchHandle Dispatcher::finish_dispatch() {
  MOE_CHECK_AS("dispatch", flight_.layer >= 0, "finish_dispatch without start_dispatch");
  const int layer = flight_.layer;
  DispatchHandle d;
  d.layer = layer;
  d.num_tokens = flight_.num_tokens;
  d.token_offsets = flight_.view.token_offsets;
  d.token_rows = flight_.view.token_rows;
  if (comm_.size() == 1) {
    keep_local(layer, d);
    group_received(layer, d, nullptr);
  } else {
    if (arena_ != nullptr) {
      arena_->wait_all(kDispatchCounter, dispatch_seq_, "dispatch");
    } else {
      messages_.wait();
    }
    read_headers(layer, d);
    receive(d);
  }
  flight_.layer = -1;
  mark(dispatch_phase_);
  if (inner_ != nullptr) return forward_in_node(std::move(d));
  return d;
}

void Dispatcher::keep_local(int layer, DispatchHandle& d) {
  // Token t is send row t, so the rows to compute are the hidden rows themselves and the routes
  // are this rank's own; the communicator is not used.
  d.num_recv_rows = d.num_tokens;
  d.recv_rows = flight_.hidden;
  d.recv_routes = send_routes_.data();
  d.own_rows = static_cast<int32_t>(d.num_tokens);
  if (d.num_tokens > kDeviceCountsMaxTokens) {
    std::vector<int32_t>& host = host_blocks_[static_cast<size_t>(layer)];
    host.resize(static_cast<size_t>(block_ints()));
    backend_.download(host.data(), block(layer), host.size() * sizeof(int32_t));
    check_block(layer, host.data(), false);
    const int E = num_experts_, W = header_width_;
    std::copy(host.begin() + E, host.begin() + E + W, host.begin() + E + W);  // recv = send
  }
}

void Dispatcher::send_messages(int layer) {
  const int N = comm_.size(), rank = comm_.rank(), E = num_experts_, W = header_width_;
  const wire::MessageFormat f = dispatch_format();
  const int32_t T = static_cast<int32_t>(flight_.num_tokens);
  int32_t rows_bound = T * std::min(top_k_, N);
  const int64_t* send_bytes = nullptr;  // whole blocks
  if (!comm_.device_buffers()) {
    // This transport sends only the used part of each block: the host reads the header first.
    std::vector<int32_t>& host = host_blocks_[static_cast<size_t>(layer)];
    host.resize(static_cast<size_t>(block_ints()));
    backend_.download(host.data() + E, block(layer) + E, static_cast<size_t>(N * W) * 4);
    send_bytes_.assign(static_cast<size_t>(N), f.header_bytes);
    rows_bound = 0;
    for (int p = 0; p < N; ++p) {
      const int64_t n = host[E + p * W + layout::kHeaderRows];
      rows_bound += static_cast<int32_t>(n);
      if (p != rank) send_bytes_[p] = wire::message_bytes(f, std::min<int64_t>(n, capacity_));
    }
    send_bytes = send_bytes_.data();
  }
  ensure_arena();
  const size_t slots_bytes =
      arena_ != nullptr ? 0 : static_cast<size_t>(N) * static_cast<size_t>(f.slot_bytes);
  const size_t spill_bytes =
      static_cast<size_t>(rows_bound) * static_cast<size_t>(f.row_bytes + wire::route_bytes(f)) +
      static_cast<size_t>(N) * static_cast<size_t>(f.row_bytes);
  send_arena_.ensure(backend_, slots_bytes + spill_bytes);
  recv_arena_.ensure(backend_, std::max<size_t>(slots_bytes, static_cast<size_t>(f.header_bytes)));
  wire::PackView pv;
  pv.f = f;
  pv.num_ranks = N;
  pv.rank = rank;
  pv.hidden = flight_.hidden;
  pv.hidden_bf16 = reinterpret_cast<const uint16_t*>(flight_.hidden_bf16);
  pv.send_token = flight_.view.send_token;
  pv.send_routes = flight_.view.send_routes;
  pv.send_offsets = flight_.view.send_offsets;
  pv.header = flight_.view.header;
  pv.max_rows = rows_bound;
  pv.slots = arena_ != nullptr ? arena_->segment(rank) : send_arena_.data();
  pv.spill = send_arena_.data() + slots_bytes;
  pv.num_tokens = T;
  pv.token_offsets = flight_.view.token_offsets;
  pv.token_rows = flight_.view.token_rows;
  // Over a shared arena the own rows go with the peers' rows, into the own slot, when receive()
  // will read them there (it also needs no spill anywhere, known after the headers: if one came,
  // receive() writes them again, elsewhere).
  pv.own_in_slot =
      arena_ != nullptr && rows_read_in_place(f) &&
      host_blocks_[static_cast<size_t>(layer)][E + rank * W + layout::kHeaderRows] <= capacity_;
  flight_.own_packed = pv.own_in_slot;
  backend_.pack_rows(pv);
  if (arena_ != nullptr) {
    arena_->publish(kDispatchCounter, ++dispatch_seq_);
  } else {
    messages_.start_blocks(comm_, backend_, send_arena_.data(), send_bytes, recv_arena_.data(),
                           f.slot_bytes);
  }
  ++collectives_[static_cast<size_t>(layer)];
}

void Dispatcher::read_headers(int layer, DispatchHandle& d) {
  const int N = comm_.size(), rank = comm_.rank(), E = num_experts_, W = header_width_;
  const wire::MessageFormat f = dispatch_format();
  int32_t* blk = block(layer);
  for (int s = 0; s < N; ++s) {
    const unsigned char* slot = arena_ != nullptr ? arena_->segment(s) + rank * f.slot_bytes
                                                  : recv_arena_.data() + s * f.slot_bytes;
    backend_.copy(blk + E + N * W + s * W, slot, static_cast<size_t>(W) * sizeof(int32_t));
  }
  std::vector<int32_t>& host = host_blocks_[static_cast<size_t>(layer)];
  host.resize(static_cast<size_t>(block_ints()));
  backend_.download(host.data(), blk, host.size() * sizeof(int32_t));
  check_block(layer, host.data(), false);
  d.send_counts.resize(N);
  d.recv_counts.resize(N);
  for (int r = 0; r < N; ++r) {
    d.send_counts[r] = host[E + r * W + layout::kHeaderRows];
    d.recv_counts[r] = host[E + N * W + r * W + layout::kHeaderRows];
  }
  d.num_recv_rows = sum(d.recv_counts);
  MOE_CHECK_AS("dispatch", d.num_recv_rows * top_k_ < INT32_MAX,
               "dispatch: {} received rows is too many", d.num_recv_rows);
  MOE_CHECK_AS("dispatch", d.recv_counts[rank] == d.send_counts[rank],
               "dispatch: rank {} sends {} rows to itself but its message says {}", rank,
               d.send_counts[rank], d.recv_counts[rank]);
  for (int r = 0; r < rank; ++r) {
    d.own_send_begin += static_cast<int32_t>(d.send_counts[r]);
    d.own_recv_begin += static_cast<int32_t>(d.recv_counts[r]);
  }
  d.own_rows = static_cast<int32_t>(d.send_counts[rank]);
  // Every rank received every sender's largest message size: all agree on the spill exchange.
  bool spill = false;
  for (int s = 0; s < N; ++s) spill |= host[E + N * W + s * W + layout::kHeaderMaxRows] > capacity_;
  if (spill) {
    exchange_spill(d);
    ++collectives_[static_cast<size_t>(layer)];
  }
  d.combine_in_arena = arena_ != nullptr && !spill;
}

void Dispatcher::exchange_spill(const DispatchHandle& d) {
  const int N = comm_.size(), rank = comm_.rank();
  const wire::MessageFormat f = dispatch_format();
  spill_send_.assign(static_cast<size_t>(N), 0);
  spill_recv_.assign(static_cast<size_t>(N), 0);
  int64_t recv_rows = 0;
  for (int p = 0; p < N; ++p) {
    if (p == rank) continue;
    spill_send_[p] = wire::spill_rows(f, d.send_counts[p]) * f.row_bytes;
    spill_recv_[p] = wire::spill_rows(f, d.recv_counts[p]) * f.row_bytes;
    recv_rows += wire::spill_rows(f, d.recv_counts[p]);
  }
  // The spill lands right after the slots' arena rows (the receive arena keeps the slots when it
  // grows), and was packed after the send slots; with a shared arena both buffers hold the spill
  // alone.
  const size_t slots_bytes =
      arena_ != nullptr ? 0 : static_cast<size_t>(N) * static_cast<size_t>(f.slot_bytes);
  grow_keeping(backend_, recv_arena_,
               slots_bytes + static_cast<size_t>(f.header_bytes + recv_rows * f.row_bytes),
               slots_bytes);
  spill_.start_v(comm_, backend_, send_arena_.data() + slots_bytes, spill_send_,
                 recv_arena_.data() + slots_bytes + f.header_bytes, spill_recv_);
  spill_.wait();
}

void Dispatcher::receive(DispatchHandle& d) {
  const int N = comm_.size(), rank = comm_.rank(), E = num_experts_, W = header_width_;
  const wire::MessageFormat f = dispatch_format();
  const int32_t R = static_cast<int32_t>(d.num_recv_rows), k = top_k_;
  // A shared arena is read in place unless a spill came apart from it or the own rows do not fit
  // this rank's own slot; a node-first proxy forwards fp32 rows (gather_rows), so it widens bf16.
  const bool shared = arena_ != nullptr;
  const bool in_place =
      rows_read_in_place(f) && (!shared || (d.combine_in_arena && d.own_rows <= capacity_));
  if (!shared) {
    // Arena rows: the slots, every source's spill, then (fp32 rows) the own rows.
    int64_t arena_rows = N * wire::slot_rows(f);
    for (int s = 0; s < N; ++s) {
      if (s != rank) arena_rows += wire::spill_rows(f, d.recv_counts[s]);
    }
    if (in_place) arena_rows += d.own_rows;
    grow_keeping(backend_, recv_arena_,
                 static_cast<size_t>(f.header_bytes + arena_rows * f.row_bytes),
                 recv_arena_.size());
  }
  if (!in_place)
    recv_rows_.ensure(backend_, static_cast<size_t>(std::max<int32_t>(R, 1) * hidden_));
  recv_routes_.ensure(backend_, static_cast<size_t>(std::max(R * k, 1)));
  IntCarver carve;
  const size_t plan = carve.add(2 * N + 2), row_at = carve.add(R);
  recv_ints_.ensure(backend_, carve.total());

  wire::ReceiveView rv;
  rv.f = f;
  rv.num_ranks = N;
  rv.rank = rank;
  rv.arena = shared ? arena_->segment(0) + rank * f.slot_bytes : recv_arena_.data();
  rv.slot_stride = shared ? arena_->segment_bytes() : f.slot_bytes;
  rv.spill = recv_arena_.data() + f.header_bytes;
  rv.spill_first_row = shared ? 0 : N * wire::slot_rows(f);
  rv.in_place = in_place;
  rv.own_in_slot = shared && in_place;
  rv.own_packed = rv.own_in_slot && flight_.own_packed;
  rv.recv_header = block(flight_.layer) + E + N * W;
  rv.plan = recv_ints_.data() + plan;
  rv.hidden = flight_.hidden;
  rv.hidden_bf16 = reinterpret_cast<const uint16_t*>(flight_.hidden_bf16);
  rv.send_token = flight_.view.send_token;
  rv.send_routes = flight_.view.send_routes;
  rv.send_offsets = flight_.view.send_offsets;
  rv.rows = in_place ? const_cast<unsigned char*>(rv.arena) + f.header_bytes
                     : reinterpret_cast<unsigned char*>(recv_rows_.data());
  rv.routes = recv_routes_.data();
  rv.row_at = recv_ints_.data() + row_at;
  rv.max_rows = R;
  backend_.receive_rows(rv);
  if (wire::rows_dtype(rv) == WireDtype::kBF16) {
    d.recv_rows_bf16 = reinterpret_cast<const bf16*>(rv.rows);
  } else {
    d.recv_rows = reinterpret_cast<const float*>(rv.rows);
  }
  d.recv_routes = rv.routes;
  d.row_at = rv.row_at;
  if (inner_ == nullptr) group_received(flight_.layer, d, rv.row_at);  // else the node's exchange
}

void Dispatcher::group_received(int layer, DispatchHandle& d, const int32_t* row_at) {
  const int N = comm_.size(), E = num_experts_, W = header_width_;
  const int32_t R = static_cast<int32_t>(d.num_recv_rows), k = top_k_;
  const int32_t S = tables_[static_cast<size_t>(layer)].local_slots;
  const int32_t chunk = backend_.traits().layout_chunk;
  const int32_t Cr = layout::num_chunks(R, chunk);
  IntCarver rc;
  const size_t chunk_slot = rc.add(static_cast<int64_t>(Cr) * S);
  const size_t entry_before = rc.add(static_cast<int64_t>(R) * k);
  const size_t slot_begin = rc.add(S + 1);
  const size_t row_index = rc.add(static_cast<int64_t>(R) * k);
  const size_t pair_of_entry = rc.add(static_cast<int64_t>(R) * k);
  group_ints_.ensure(backend_, rc.total());
  int32_t* gi = group_ints_.data();
  layout::SlotGroupingView g;
  g.routes = d.recv_routes;
  g.num_rows = R;
  g.top_k = k;
  g.chunk_size = chunk;
  g.num_slots = S;
  g.row_at = row_at;
  g.chunk_slot = gi + chunk_slot;
  g.entry_before = gi + entry_before;
  g.slot_begin = gi + slot_begin;
  g.row_index = gi + row_index;
  g.pair_of_entry = gi + pair_of_entry;
  g.error = block(layer) + E + 2 * N * W + 1;
  backend_.group_by_slot(g);

  d.experts.row_index = g.row_index;
  d.experts.slot_begin = g.slot_begin;
  d.experts.num_slots = g.num_slots;
  d.experts.max_pairs = static_cast<int64_t>(R) * k;
  d.pair_of_entry = g.pair_of_entry;
  const std::vector<int32_t>& host = host_blocks_[static_cast<size_t>(layer)];
  if (!host.empty()) {
    // The host has every source's per-slot pair counts: slot_begin without asking the device.
    d.host_slot_begin.assign(static_cast<size_t>(g.num_slots) + 1, 0);
    for (int32_t s = 0; s < g.num_slots; ++s) {
      int32_t pairs = 0;
      for (int r = 0; r < N; ++r) pairs += host[E + N * W + r * W + layout::kHeaderSlots + s];
      d.host_slot_begin[s + 1] = d.host_slot_begin[s] + pairs;
    }
    d.experts.host_slot_begin = d.host_slot_begin.data();
  }
}

void Dispatcher::combine(kernels::layout::ExpertRows expert_out, const DispatchHandle& d,
                         float* x) {
  start_combine(expert_out, d);
  finish_combine(d, x);
}

void Dispatcher::start_combine(kernels::layout::ExpertRows expert_out, const DispatchHandle& d) {
  if (inner_ == nullptr) {
    start_combine_rows(expert_out, d);
    return;
  }
  // The node's sums of each received row (summed inside the node first), then one row back each.
  const int64_t R = received_.num_recv_rows;
  node_sums_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(R, 1) * hidden_));
  backend_.fill_zero(node_sums_.data(), static_cast<size_t>(R * hidden_) * sizeof(float));
  inner_->combine(expert_out, d, node_sums_.data());
  start_combine_rows(node_sums_.data(), received_);
}

void Dispatcher::finish_combine(const DispatchHandle& d, float* x) {
  finish_combine_rows(inner_ != nullptr ? received_ : d, x);
}

void Dispatcher::start_combine_rows(kernels::layout::ExpertRows expert_out,
                                    const DispatchHandle& d) {
  const int N = comm_.size(), rank = comm_.rank();
  expert_out_ = expert_out;
  if (N == 1) return;
  if (d.combine_in_arena) {
    start_combine_in_arena(d);
    return;
  }
  // The reverse exchange: each source gets its rows back, in the order it sent them.
  const int64_t row_bytes = wire::row_bytes(wire_.combine, hidden_);
  const int64_t out_rows = d.num_recv_rows - d.own_rows;
  const int64_t back_rows = sum(d.send_counts) - d.own_rows;
  partial_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(out_rows, 1) * row_bytes));
  returned_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(back_rows, 1) * row_bytes));
  write_partial_rows(d, partial_.data());
  back_send_.assign(static_cast<size_t>(N), 0);
  back_recv_.assign(static_cast<size_t>(N), 0);
  for (int p = 0; p < N; ++p) {
    if (p == rank) continue;
    back_send_[p] = d.recv_counts[p] * row_bytes;
    back_recv_[p] = d.send_counts[p] * row_bytes;
  }
  back_.start_v(comm_, backend_, partial_.data(), back_send_, returned_.data(), back_recv_);
  ++collectives_[static_cast<size_t>(d.layer)];
}

void Dispatcher::write_partial_rows(const DispatchHandle& d, unsigned char* out) {
  if (d.num_recv_rows == d.own_rows) return;
  layout::PartialRowsView pv;
  pv.routes = d.recv_routes;
  pv.pair_of_entry = d.pair_of_entry;
  pv.expert_out = expert_out_;
  pv.width = hidden_;
  pv.top_k = top_k_;
  pv.num_rows = static_cast<int32_t>(d.num_recv_rows);
  pv.own_begin = d.own_recv_begin;
  pv.own_rows = d.own_rows;
  pv.dtype = wire_.combine;
  pv.out = out;
  backend_.combine_partial(pv);
}

void Dispatcher::finish_combine_rows(const DispatchHandle& d, float* x) {
  const int64_t* returned_at = nullptr;
  if (d.combine_in_arena) {
    arena_->wait_all(kCombineCounter, combine_seq_, "combine");
    returned_at = returned_offsets(d);
  } else {
    back_.wait();
  }
  if (d.num_tokens > 0) {
    layout::CombineSources src;
    src.returned = d.combine_in_arena ? arena_->segment(0) : returned_.data();
    src.returned_at = returned_at;
    src.dtype = wire_.combine;
    src.own_send_begin = d.own_send_begin;
    src.own_rows = d.own_rows;
    src.own_recv_begin = d.own_recv_begin;
    src.routes = d.recv_routes;
    src.pair_of_entry = d.pair_of_entry;
    src.expert_out = expert_out_;
    src.top_k = top_k_;
    backend_.combine_residual(src, d.token_offsets, d.token_rows, hidden_,
                              static_cast<int32_t>(d.num_tokens), x);
  }
  expert_out_ = {};
  mark(combine_phase_);
}

}  // namespace moe::parallel
