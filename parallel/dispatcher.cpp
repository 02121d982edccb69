// Dispatcher: the expert-parallel exchange of one MoE layer with its layout computed in backend
// memory (dispatcher.h draws the buffers and says what the host waits for).
#include "parallel/dispatcher.h"

#include <algorithm>
#include <climits>

#include "kernels/common/check.h"

namespace moe::parallel {
namespace {

namespace layout = kernels::layout;

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

}  // namespace

Dispatcher::Dispatcher(Communicator& comm, kernels::Backend& backend, int64_t hidden, int top_k)
    : comm_(comm), backend_(backend), hidden_(hidden), top_k_(top_k) {
  MOE_CHECK_AS("dispatch", hidden_ >= 1 && top_k_ >= 1,
               "dispatcher needs hidden >= 1 and top_k >= 1 (got {}, {})", hidden_, top_k_);
  MOE_CHECK_AS("dispatch", !comm_.device_buffers() || !backend_.is_host_memory(),
               "communicator {} moves device buffers but backend {} keeps tensors in host memory",
               comm_.name(), backend_.name());
}

int64_t Dispatcher::block_ints() const {
  return num_experts_ + 2 * static_cast<int64_t>(comm_.size()) * header_width_ + 2;
}

void Dispatcher::set_placement(const Placement& placement) {
  const int N = comm_.size(), rank = comm_.rank();
  MOE_CHECK_AS("dispatch", placement.num_ranks() == N,
               "dispatch: placement is for {} ranks but the job has {}", placement.num_ranks(), N);
  num_experts_ = placement.num_experts();
  int max_slots = 0;
  for (int l = 0; l < placement.num_layers(); ++l) {
    const LayerPlacement& lp = placement.layer(l);
    for (int d = 0; d < lp.num_ranks(); ++d) max_slots = std::max(max_slots, lp.num_local_slots(d));
  }
  header_width_ = 2 + max_slots;
  tables_.clear();
  tables_.resize(static_cast<size_t>(placement.num_layers()));
  for (int l = 0; l < placement.num_layers(); ++l) {
    const LayerPlacement& lp = placement.layer(l);
    if (lp.num_experts() == 0) continue;  // dense layer
    MOE_CHECK_AS("dispatch", lp.num_experts() == num_experts_,
                 "layer {} places {} experts, the model has {}", l, lp.num_experts(), num_experts_);
    // replica_begin [E + 1] | replica_rank [Rp] | replica_slot [Rp] | rank_num_slots [N]
    std::vector<int32_t> begin{0}, ranks, slots, num_slots;
    for (const auto& replicas : lp.expert_slots) {
      for (const Slot& s : replicas) {
        ranks.push_back(s.rank);
        slots.push_back(s.local_slot);
      }
      begin.push_back(static_cast<int32_t>(ranks.size()));
    }
    for (int d = 0; d < N; ++d) num_slots.push_back(lp.num_local_slots(d));
    std::vector<int32_t> flat;
    for (const auto* part : {&begin, &ranks, &slots, &num_slots}) {
      flat.insert(flat.end(), part->begin(), part->end());
    }
    LayerTable& t = tables_[static_cast<size_t>(l)];
    t.data = kernels::Buffer<int32_t>(backend_, flat.size());
    backend_.upload(t.data.data(), flat.data(), flat.size() * sizeof(int32_t));
    const int32_t* base = t.data.data();
    t.table.num_experts = num_experts_;
    t.table.num_ranks = N;
    t.table.rank = rank;
    t.table.max_local_slots = max_slots;
    t.table.replica_begin = base;
    t.table.replica_rank = base + begin.size();
    t.table.replica_slot = base + begin.size() + ranks.size();
    t.table.rank_num_slots = base + begin.size() + 2 * ranks.size();
    t.local_slots = lp.num_local_slots(rank);
  }
  stats_ = kernels::Buffer<int32_t>(
      backend_, static_cast<size_t>(std::max<int64_t>(1, placement.num_layers()) * block_ints()));
  host_blocks_.assign(tables_.size(), {});
  dispatched_.assign(tables_.size(), 0);
}

void Dispatcher::begin_step() {
  backend_.fill_zero(stats_.data(), stats_.size_bytes());  // error flags and unused counters
  std::fill(dispatched_.begin(), dispatched_.end(), 0);
  for (auto& b : host_blocks_) b.clear();
}

void Dispatcher::note_replayed() {
  for (size_t l = 0; l < tables_.size(); ++l) dispatched_[l] = tables_[l].data.size() > 0;
}

std::vector<const void*> Dispatcher::buffers() const {
  return {stats_.data(),       source_ints_.data(), recv_ints_.data(),
          send_routes_.data(), recv_routes_.data(), send_rows_.data(),
          recv_rows_.data(),   partial_.data(),     returned_.data()};
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
}

layout::SourceLayoutView Dispatcher::source_layout(int layer, int32_t T, const int32_t* ids,
                                                   const float* weights) {
  const int32_t N = comm_.size(), k = top_k_, E = num_experts_, W = header_width_;
  const int32_t chunk = backend_.traits().layout_chunk;
  const int32_t C = layout::num_chunks(T, chunk);
  const int32_t max_rows = T * std::min(k, N);
  IntCarver carve;
  const size_t chunk_expert = carve.add(static_cast<int64_t>(C) * E);
  const size_t chunk_dest = carve.add(static_cast<int64_t>(C) * N);
  const size_t chunk_rows = carve.add(C);
  const size_t pair_dest = carve.add(T * k), pair_slot = carve.add(T * k);
  const size_t token_ndest = carve.add(T), token_dest = carve.add(T * k);
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
  v.num_tokens = T;
  v.top_k = k;
  v.chunk_size = chunk;
  v.table = tables_[static_cast<size_t>(layer)].table;
  v.chunk_expert = si + chunk_expert;
  v.chunk_dest = si + chunk_dest;
  v.chunk_rows = si + chunk_rows;
  v.pair_dest = si + pair_dest;
  v.pair_slot = si + pair_slot;
  v.token_ndest = si + token_ndest;
  v.token_dest = si + token_dest;
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
                                    const int32_t* ids, const float* weights) {
  const int N = comm_.size();
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
  const layout::SourceLayoutView v =
      source_layout(layer, static_cast<int32_t>(num_tokens), ids, weights);
  mark(layout_phase_);

  DispatchHandle d;
  d.num_tokens = num_tokens;
  d.token_offsets = v.token_offsets;
  d.token_rows = v.token_rows;
  if (N == 1) {
    // One rank: token t is send row t, so the rows to compute are the hidden rows themselves and
    // the routes are this rank's own; the communicator is not used.
    d.num_recv_rows = num_tokens;
    d.recv_rows = hidden;
    d.recv_routes = send_routes_.data();
    d.own_rows = static_cast<int32_t>(num_tokens);
    if (num_tokens > kDeviceCountsMaxTokens) {
      std::vector<int32_t>& host = host_blocks_[static_cast<size_t>(layer)];
      host.resize(static_cast<size_t>(block_ints()));
      backend_.download(host.data(), block(layer), host.size() * sizeof(int32_t));
      check_block(layer, host.data(), false);
      const int E = num_experts_, W = header_width_;
      std::copy(host.begin() + E, host.begin() + E + W, host.begin() + E + W);  // recv = send
    }
  } else {
    exchange_counts(layer, d);
    exchange_payload(hidden, v.send_token, d);
  }
  group_received(layer, d);
  mark(dispatch_phase_);
  return d;
}

void Dispatcher::exchange_counts(int layer, DispatchHandle& d) {
  const int N = comm_.size(), rank = comm_.rank(), E = num_experts_, W = header_width_;
  int32_t* blk = block(layer);
  // Headers: block d of the send header goes to rank d. Then one copy of the counters.
  const std::vector<int64_t> counts(static_cast<size_t>(N), W);
  std::vector<int32_t>& host = host_blocks_[static_cast<size_t>(layer)];
  host.resize(static_cast<size_t>(block_ints()));
  if (comm_.device_buffers() || backend_.is_host_memory()) {
    comm_.all_to_all_v<int32_t>({blk + E, static_cast<size_t>(N * W)}, counts,
                                {blk + E + N * W, static_cast<size_t>(N * W)}, counts);
    backend_.download(host.data(), blk, host.size() * sizeof(int32_t));
  } else {
    backend_.download(host.data(), blk, host.size() * sizeof(int32_t));
    std::vector<int32_t> sent(host.begin() + E, host.begin() + E + N * W);
    comm_.all_to_all_v<int32_t>(sent, counts, {host.data() + E + N * W, static_cast<size_t>(N * W)},
                                counts);
  }
  check_block(layer, host.data(), false);
  d.send_counts.resize(N);
  d.recv_counts.resize(N);
  for (int r = 0; r < N; ++r) {
    d.send_counts[r] = host[E + r * W];
    d.recv_counts[r] = host[E + N * W + r * W];
  }
  d.num_recv_rows = sum(d.recv_counts);
  MOE_CHECK_AS("dispatch", d.num_recv_rows * top_k_ < INT32_MAX,
               "dispatch: {} received rows is too many", d.num_recv_rows);
  MOE_CHECK_AS("dispatch", d.recv_counts[rank] == d.send_counts[rank],
               "dispatch: rank {} sends {} rows to itself but the header exchange says {}", rank,
               d.send_counts[rank], d.recv_counts[rank]);
  for (int r = 0; r < rank; ++r) {
    d.own_send_begin += static_cast<int32_t>(d.send_counts[r]);
    d.own_recv_begin += static_cast<int32_t>(d.recv_counts[r]);
  }
  d.own_rows = static_cast<int32_t>(d.send_counts[rank]);
}

void Dispatcher::exchange_payload(const float* hidden, const int32_t* send_token,
                                  DispatchHandle& d) {
  const int64_t num_send = sum(d.send_counts);
  const int64_t own_end = d.own_send_begin + d.own_rows;
  const int64_t remote_recv = d.num_recv_rows - d.own_rows;
  // Rows for other ranks packed without the own block; own rows straight into the tail of the
  // receive buffer.
  send_rows_.ensure(backend_,
                    static_cast<size_t>(std::max<int64_t>(num_send - d.own_rows, 1) * hidden_));
  recv_rows_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(d.num_recv_rows, 1) * hidden_));
  if (d.own_send_begin > 0) {
    backend_.gather_rows(hidden, hidden_, send_token, d.own_send_begin, send_rows_.data());
  }
  if (num_send > own_end) {
    backend_.gather_rows(hidden, hidden_, send_token + own_end, num_send - own_end,
                         send_rows_.data() + d.own_send_begin * hidden_);
  }
  if (d.own_rows > 0) {
    backend_.gather_rows(hidden, hidden_, send_token + d.own_send_begin, d.own_rows,
                         recv_rows_.data() + remote_recv * hidden_);
  }
  set_remote_counts(d);
  exchange_rows<float>(comm_, backend_, hidden_, send_rows_.data(), remote_send_, recv_rows_.data(),
                       remote_recv_, row_scratch_);
  // Routes travel whole (own block included), in received order.
  recv_routes_.ensure(backend_,
                      static_cast<size_t>(std::max<int64_t>(d.num_recv_rows * top_k_, 1)));
  exchange_rows<kernels::RouteEntry>(comm_, backend_, top_k_, send_routes_.data(), d.send_counts,
                                     recv_routes_.data(), d.recv_counts, route_scratch_);
  d.recv_rows = recv_rows_.data();
  d.recv_routes = recv_routes_.data();
}

void Dispatcher::set_remote_counts(const DispatchHandle& d) {
  const int rank = comm_.rank();
  remote_send_ = d.send_counts;
  remote_send_[rank] = 0;
  remote_recv_ = d.recv_counts;
  remote_recv_[rank] = 0;
}

void Dispatcher::group_received(int layer, DispatchHandle& d) {
  const int N = comm_.size(), E = num_experts_, W = header_width_;
  const int32_t R = static_cast<int32_t>(d.num_recv_rows), k = top_k_;
  const int32_t S = tables_[static_cast<size_t>(layer)].local_slots;
  const int32_t chunk = backend_.traits().layout_chunk;
  const int32_t Cr = layout::num_chunks(R, chunk);
  IntCarver rc;
  const size_t chunk_slot = rc.add(static_cast<int64_t>(Cr) * S);
  const size_t slot_begin = rc.add(S + 1);
  const size_t row_index = rc.add(static_cast<int64_t>(R) * k);
  const size_t pair_of_entry = rc.add(static_cast<int64_t>(R) * k);
  recv_ints_.ensure(backend_, rc.total());
  int32_t* ri = recv_ints_.data();
  layout::SlotGroupingView g;
  g.routes = d.recv_routes;
  g.num_rows = R;
  g.top_k = k;
  g.chunk_size = chunk;
  g.num_slots = S;
  g.own_begin = d.own_recv_begin;
  g.own_rows = d.own_rows;
  g.chunk_slot = ri + chunk_slot;
  g.slot_begin = ri + slot_begin;
  g.row_index = ri + row_index;
  g.pair_of_entry = ri + pair_of_entry;
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
      for (int r = 0; r < N; ++r) pairs += host[E + N * W + r * W + 2 + s];
      d.host_slot_begin[s + 1] = d.host_slot_begin[s] + pairs;
    }
    d.experts.host_slot_begin = d.host_slot_begin.data();
  }
}

void Dispatcher::combine(const float* expert_out, const DispatchHandle& d, float* x) {
  const int N = comm_.size();
  const int32_t R = static_cast<int32_t>(d.num_recv_rows);
  const int64_t remote_recv = d.num_recv_rows - d.own_rows;
  partial_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(R, 1) * hidden_));
  if (R > 0) {
    backend_.combine_partial(d.recv_routes, d.pair_of_entry, expert_out, hidden_, top_k_, R,
                             d.own_recv_begin, d.own_rows, partial_.data());
  }
  layout::CombineSources src;
  src.partial = partial_.data();
  src.own_send_begin = d.own_send_begin;
  src.own_rows = d.own_rows;
  src.remote_recv_rows = static_cast<int32_t>(remote_recv);
  if (N > 1) {
    // The reverse exchange: received rows go back where they came from, in the same order.
    const int64_t returned_rows = sum(d.send_counts) - d.own_rows;
    returned_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(returned_rows, 1) * hidden_));
    set_remote_counts(d);
    exchange_rows<float>(comm_, backend_, hidden_, partial_.data(), remote_recv_, returned_.data(),
                         remote_send_, row_scratch_);
    src.returned = returned_.data();
  }
  if (d.num_tokens > 0) {
    backend_.combine_residual(src, d.token_offsets, d.token_rows, hidden_,
                              static_cast<int32_t>(d.num_tokens), x);
  }
  mark(combine_phase_);
}

std::vector<LayerLoad> Dispatcher::collect_loads() {
  const int N = comm_.size(), rank = comm_.rank();
  const int64_t B = block_ints();
  const int E = num_experts_, W = header_width_;
  std::vector<int32_t> all;
  std::vector<LayerLoad> loads(tables_.size());
  // One copy of every layer's counters: the error flags, and what the host has not seen yet.
  if (std::find(dispatched_.begin(), dispatched_.end(), 1) != dispatched_.end()) {
    all.resize(static_cast<size_t>(B) * tables_.size());
    backend_.download(all.data(), stats_.data(), all.size() * sizeof(int32_t));
  }
  for (size_t l = 0; l < tables_.size(); ++l) {
    if (!dispatched_[l]) continue;
    check_block(static_cast<int>(l), all.data() + l * B, true);
    // Several ranks over a host communicator: the received headers exist only on the host.
    const int32_t* b = host_blocks_[l].empty() ? all.data() + l * B : host_blocks_[l].data();
    // One rank exchanges nothing: what it received is what it sent.
    const int32_t* recv_header = N == 1 ? b + E : b + E + N * W;
    LayerLoad& load = loads[l];
    load.tokens_per_expert.assign(b, b + E);
    std::vector<int64_t> send_rows(N), send_pairs(N), recv_rows(N), recv_pairs(N);
    for (int r = 0; r < N; ++r) {
      send_rows[r] = b[E + r * W];
      send_pairs[r] = b[E + r * W + 1];
      recv_rows[r] = recv_header[r * W];
      recv_pairs[r] = recv_header[r * W + 1];
    }
    load.tokens_per_rank = send_pairs;
    load.rows_per_rank = send_rows;
    load.traffic =
        exchange_stats(rank, send_rows, send_pairs, recv_rows, recv_pairs, hidden_, top_k_);
  }
  return loads;
}

}  // namespace moe::parallel
