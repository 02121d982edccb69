// Dispatcher: deduplicated layout, dispatch and combine for one MoE layer (layouts drawn in
// dispatcher.h). Layout and grouping are pure host code shared by every backend; all float data
// moves through kernels::Backend, so device backends work unchanged (staged through host memory
// when the communicator is host-only). Sums run in a fixed order with fp32 accumulation.
#include "parallel/dispatcher.h"

#include <algorithm>
#include <climits>

#include "kernels/common/check.h"

namespace moe::parallel {
namespace {

int64_t sum(std::span<const int64_t> v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

// This rank's own block within rows laid out by rank (send rows by destination, received rows by
// source). Own rows never go through the communicator: buffers keep them after the other ranks'
// rows, i.e. physical order = [rows of other ranks, in rank order][own rows].
struct OwnBlock {
  int64_t begin = 0;  // logical index of the first own row
  int64_t rows = 0;
  int64_t total = 0;  // all rows, own included

  OwnBlock(std::span<const int64_t> counts, int rank) : total(sum(counts)) {
    for (int r = 0; r < rank; ++r) begin += counts[r];
    rows = counts[rank];
  }
  int64_t remote_rows() const { return total - rows; }
  bool is_own(int64_t row) const { return row >= begin && row < begin + rows; }
  int64_t physical(int64_t row) const {
    if (row < begin) return row;
    return is_own(row) ? remote_rows() + (row - begin) : row - rows;
  }
};

// counts with this rank's entry zeroed: what the communicator moves.
void remote_counts(std::span<const int64_t> counts, int rank, std::vector<int64_t>& out) {
  out.assign(counts.begin(), counts.end());
  out[rank] = 0;
}

}  // namespace

ExchangeStats& ExchangeStats::operator+=(const ExchangeStats& o) {
  rows_sent_remote += o.rows_sent_remote;
  rows_kept_local += o.rows_kept_local;
  pairs_remote += o.pairs_remote;
  rows_received += o.rows_received;
  bytes_sent_remote += o.bytes_sent_remote;
  bytes_kept_local += o.bytes_kept_local;
  bytes_remote_without_dedup += o.bytes_remote_without_dedup;
  pairs_received += o.pairs_received;
  return *this;
}

ExchangeStats exchange_stats(int rank, std::span<const int64_t> send_rows,
                             std::span<const int64_t> send_pairs,
                             std::span<const int64_t> recv_rows,
                             std::span<const int64_t> recv_pairs, int64_t hidden, int top_k) {
  // Dispatch sends rows + routes, combine returns one partial row per received row.
  const int64_t row_bytes = hidden * static_cast<int64_t>(sizeof(float));
  const int64_t routes_bytes = top_k * static_cast<int64_t>(sizeof(RouteEntry));
  const int64_t sent_local = send_rows[rank];
  const int64_t recv_local = recv_rows[rank];
  const int64_t num_recv = sum(recv_rows);
  ExchangeStats st;
  st.rows_sent_remote = sum(send_rows) - sent_local;
  st.rows_kept_local = sent_local;
  st.pairs_remote = sum(send_pairs) - send_pairs[rank];
  st.rows_received = num_recv;
  st.pairs_received = sum(recv_pairs);
  st.bytes_sent_remote =
      st.rows_sent_remote * (row_bytes + routes_bytes) + (num_recv - recv_local) * row_bytes;
  st.bytes_kept_local = sent_local * (row_bytes + routes_bytes) + recv_local * row_bytes;
  st.bytes_remote_without_dedup =
      st.pairs_remote * (row_bytes + static_cast<int64_t>(sizeof(RouteEntry))) +
      (sum(recv_pairs) - recv_pairs[rank]) * row_bytes;
  return st;
}

DispatchLayout build_dispatch_layout(const LayerPlacement& placement, int rank,
                                     std::span<const int32_t> topk_ids,
                                     std::span<const float> topk_weights, int64_t num_tokens,
                                     int top_k) {
  const int num_ranks = placement.num_ranks();
  const int num_experts = placement.num_experts();
  MOE_CHECK_AS("dispatch", num_ranks >= 1 && rank >= 0 && rank < num_ranks,
               "layout: rank {} outside a placement of {} ranks", rank, num_ranks);
  MOE_CHECK_AS("dispatch", num_experts >= 1, "layout: the placement has no experts (dense layer?)");
  MOE_CHECK_AS("dispatch", top_k >= 1, "layout: top_k must be >= 1, got {}", top_k);
  MOE_CHECK_AS("dispatch", num_tokens >= 0 && num_tokens * top_k < INT32_MAX,
               "layout: {} tokens x top-{} is outside the supported range", num_tokens, top_k);
  const int64_t num_pairs = num_tokens * top_k;
  MOE_CHECK_AS("dispatch",
               static_cast<int64_t>(topk_ids.size()) >= num_pairs &&
                   static_cast<int64_t>(topk_weights.size()) >= num_pairs,
               "layout: {} tokens x top-{} needs {} ids and weights, got {} and {}", num_tokens,
               top_k, num_pairs, topk_ids.size(), topk_weights.size());

  DispatchLayout L;
  L.num_ranks = num_ranks;
  L.top_k = top_k;
  L.num_tokens = num_tokens;
  L.send_counts.assign(num_ranks, 0);
  L.pairs_per_rank.assign(num_ranks, 0);
  L.expert_tokens.assign(num_experts, 0);
  L.token_offsets.assign(num_tokens + 1, 0);

  // Replicas share an expert's pairs by the one split rule (placement.h: ReplicaSplit).
  ReplicaSplit split(placement, rank);

  // Pass 1: pick a slot per (token, k) pair; per token, the ascending distinct destinations.
  std::vector<int32_t> pair_dest(num_pairs), pair_slot(num_pairs);
  std::vector<int32_t> token_dests;  // [S] destinations of each token, in token order
  token_dests.reserve(num_pairs);
  std::vector<int32_t> dests(top_k);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int j = 0; j < top_k; ++j) {
      const int64_t p = t * top_k + j;
      const int32_t e = topk_ids[p];
      MOE_CHECK_AS("dispatch", e >= 0 && e < num_experts,
                   "layout: token {} routes to expert {}, but experts are 0..{}", t, e,
                   num_experts - 1);
      MOE_CHECK_AS("dispatch", !placement.expert_slots[e].empty(), "layout: expert {} has no slot",
                   e);
      const Slot& s = split.next(e);
      const int dest = s.rank;
      const int slot = s.local_slot;
      pair_dest[p] = dest;
      pair_slot[p] = slot;
      dests[j] = dest;
      ++L.pairs_per_rank[dest];
      ++L.expert_tokens[e];
    }
    std::sort(dests.begin(), dests.end());
    const auto end = std::unique(dests.begin(), dests.end());
    for (auto it = dests.begin(); it != end; ++it) {
      token_dests.push_back(*it);
      ++L.send_counts[*it];
    }
    L.token_offsets[t + 1] = static_cast<int64_t>(token_dests.size());
  }

  // Pass 2: rows by destination, then ascending token (tokens are visited in order).
  const int64_t num_rows = static_cast<int64_t>(token_dests.size());
  std::vector<int64_t> cursor(num_ranks, 0);
  for (int d = 1; d < num_ranks; ++d) cursor[d] = cursor[d - 1] + L.send_counts[d - 1];
  L.send_token.resize(num_rows);
  L.token_rows.resize(num_rows);
  L.send_routes.assign(static_cast<size_t>(num_rows) * top_k, RouteEntry{});
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t i = L.token_offsets[t]; i < L.token_offsets[t + 1]; ++i) {
      const int32_t d = token_dests[i];
      const int64_t row = cursor[d]++;
      L.send_token[row] = static_cast<int32_t>(t);
      L.token_rows[i] = static_cast<int32_t>(row);
      RouteEntry* routes = &L.send_routes[static_cast<size_t>(row) * top_k];
      for (int j = 0; j < top_k; ++j) {
        const int64_t p = t * top_k + j;
        if (pair_dest[p] == d) routes[j] = RouteEntry{pair_slot[p], topk_weights[p]};
      }
    }
  }
  return L;
}

ExpertBatch group_by_slot(std::span<const RouteEntry> recv_routes, int64_t num_recv_rows, int top_k,
                          int num_local_slots) {
  MOE_CHECK_AS("dispatch", top_k >= 1 && num_recv_rows >= 0 && num_local_slots >= 0,
               "group_by_slot: bad sizes (rows {}, top_k {}, slots {})", num_recv_rows, top_k,
               num_local_slots);
  const int64_t num_entries = num_recv_rows * top_k;
  MOE_CHECK_AS("dispatch", static_cast<int64_t>(recv_routes.size()) >= num_entries,
               "group_by_slot: {} rows x top-{} need {} route entries, got {}", num_recv_rows,
               top_k, num_entries, recv_routes.size());
  MOE_CHECK_AS("dispatch", num_entries < INT32_MAX, "group_by_slot: {} route entries is too many",
               num_entries);
  ExpertBatch b;
  b.slot_begin.assign(static_cast<size_t>(num_local_slots) + 1, 0);
  for (int64_t i = 0; i < num_entries; ++i) {
    const int32_t s = recv_routes[i].local_slot;
    if (s < 0) continue;
    MOE_CHECK_AS("dispatch", s < num_local_slots,
                 "group_by_slot: received row {} names local slot {}, but this rank has {} slots",
                 i / top_k, s, num_local_slots);
    ++b.slot_begin[s + 1];
  }
  for (int s = 0; s < num_local_slots; ++s) b.slot_begin[s + 1] += b.slot_begin[s];
  std::vector<int64_t> cursor(b.slot_begin.begin(), b.slot_begin.end() - 1);
  b.row_index.resize(b.slot_begin.back());
  b.pair_of_entry.assign(num_entries, -1);
  for (int64_t r = 0; r < num_recv_rows; ++r) {
    for (int j = 0; j < top_k; ++j) {
      const int32_t s = recv_routes[r * top_k + j].local_slot;
      if (s < 0) continue;
      const int64_t p = cursor[s]++;
      b.row_index[p] = static_cast<int32_t>(r);
      b.pair_of_entry[r * top_k + j] = static_cast<int32_t>(p);
    }
  }
  return b;
}

Dispatcher::Dispatcher(Communicator& comm, kernels::Backend& backend, int64_t hidden, int top_k)
    : comm_(comm), backend_(backend), hidden_(hidden), top_k_(top_k) {
  MOE_CHECK_AS("dispatch", hidden_ >= 1 && top_k_ >= 1,
               "dispatcher needs hidden >= 1 and top_k >= 1 (got {}, {})", hidden_, top_k_);
  MOE_CHECK_AS("dispatch", !comm_.device_buffers() || !backend_.is_host_memory(),
               "communicator {} moves device buffers but backend {} keeps tensors in host memory",
               comm_.name(), backend_.name());
}

void Dispatcher::exchange_routes(const std::vector<RouteEntry>& send,
                                 std::span<const int64_t> send_rows, std::vector<RouteEntry>& recv,
                                 std::span<const int64_t> recv_rows) {
  const int n = comm_.size();
  send_elems_.resize(n);
  recv_elems_.resize(n);
  for (int r = 0; r < n; ++r) {
    send_elems_[r] = send_rows[r] * top_k_;
    recv_elems_[r] = recv_rows[r] * top_k_;
  }
  recv.resize(static_cast<size_t>(sum(recv_rows) * top_k_));
  if (!comm_.device_buffers()) {
    comm_.all_to_all_v<RouteEntry>(send, send_elems_, recv, recv_elems_);
    return;
  }
  dev_send_routes_.ensure(backend_, send.size());
  dev_recv_routes_.ensure(backend_, recv.size());
  if (!send.empty()) {
    backend_.upload(dev_send_routes_.data(), send.data(), send.size() * sizeof(RouteEntry));
  }
  comm_.all_to_all_v<RouteEntry>({dev_send_routes_.data(), send.size()}, send_elems_,
                                 {dev_recv_routes_.data(), recv.size()}, recv_elems_);
  if (!recv.empty()) {
    backend_.download(recv.data(), dev_recv_routes_.data(), recv.size() * sizeof(RouteEntry));
  }
}

DispatchResult Dispatcher::dispatch(const float* hidden, int64_t num_tokens,
                                    std::span<const int32_t> topk_ids,
                                    std::span<const float> topk_weights,
                                    const LayerPlacement& placement) {
  const int rank = comm_.rank();
  const int num_ranks = comm_.size();
  MOE_CHECK_AS("dispatch", placement.num_ranks() == num_ranks,
               "dispatch: placement is for {} ranks but the job has {}", placement.num_ranks(),
               num_ranks);
  MOE_CHECK_AS("dispatch", num_tokens == 0 || hidden != nullptr,
               "dispatch: {} tokens but no hidden states", num_tokens);
  stats_ = ExchangeStats{};
  DispatchResult res;
  res.layout = build_dispatch_layout(placement, rank, topk_ids, topk_weights, num_tokens, top_k_);
  const DispatchLayout& L = res.layout;
  mark(layout_phase_);

  res.recv_counts.assign(num_ranks, 0);
  comm_.all_to_all(L.send_counts, res.recv_counts);
  const int64_t num_send = L.num_send_rows();
  const int64_t num_recv = sum(res.recv_counts);
  MOE_CHECK_AS("dispatch", num_recv < INT32_MAX, "dispatch: {} received rows is too many",
               num_recv);

  MOE_CHECK_AS("dispatch", res.recv_counts[rank] == L.send_counts[rank],
               "dispatch: rank {} sends {} rows to itself but the count exchange says {}", rank,
               L.send_counts[rank], res.recv_counts[rank]);

  // Rows for other ranks are gathered into the send buffer (own block skipped); own rows are
  // gathered straight into the tail of the receive buffer.
  const OwnBlock send_own(L.send_counts, rank), recv_own(res.recv_counts, rank);
  send_rows_.ensure(backend_, static_cast<size_t>(send_own.remote_rows() * hidden_));
  recv_rows_.ensure(backend_, static_cast<size_t>(num_recv * hidden_));
  const int32_t* tokens = L.send_token.data();
  const int64_t after_own = send_own.begin + send_own.rows;
  if (send_own.begin > 0) {
    backend_.gather_rows(hidden, hidden_, tokens, send_own.begin, send_rows_.data());
  }
  if (num_send > after_own) {
    backend_.gather_rows(hidden, hidden_, tokens + after_own, num_send - after_own,
                         send_rows_.data() + send_own.begin * hidden_);
  }
  if (send_own.rows > 0) {
    backend_.gather_rows(hidden, hidden_, tokens + send_own.begin, send_own.rows,
                         recv_rows_.data() + recv_own.remote_rows() * hidden_);
  }
  remote_counts(L.send_counts, rank, remote_send_);
  remote_counts(res.recv_counts, rank, remote_recv_);
  exchange_rows<float>(comm_, backend_, hidden_, send_rows_.data(), remote_send_, recv_rows_.data(),
                       remote_recv_, row_scratch_);
  exchange_routes(L.send_routes, L.send_counts, res.recv_routes, res.recv_counts);
  res.batch = group_by_slot(res.recv_routes, num_recv, top_k_, placement.num_local_slots(rank));
  for (int32_t& row : res.batch.row_index) row = static_cast<int32_t>(recv_own.physical(row));
  res.recv_rows = recv_rows_.data();
  res.num_recv_rows = num_recv;

  // Traffic: the pairs received from each source rank, counted from the routes.
  std::vector<int64_t> recv_pairs(num_ranks, 0);
  {
    int64_t row = 0;
    for (int s = 0; s < num_ranks; ++s) {
      for (int64_t i = 0; i < res.recv_counts[s]; ++i, ++row) {
        for (int j = 0; j < top_k_; ++j) {
          recv_pairs[s] += res.recv_routes[row * top_k_ + j].local_slot >= 0 ? 1 : 0;
        }
      }
    }
  }
  stats_ = exchange_stats(rank, L.send_counts, L.pairs_per_rank, res.recv_counts, recv_pairs,
                          hidden_, top_k_);
  mark(dispatch_phase_);
  return res;
}

void Dispatcher::combine(const float* expert_out, const DispatchResult& result, float* y) {
  const DispatchLayout& L = result.layout;
  const int64_t num_recv = result.num_recv_rows;
  const int64_t num_pairs = result.batch.num_pairs();
  MOE_CHECK_AS("dispatch", L.top_k == top_k_ && L.num_ranks == comm_.size(),
               "combine: the result was built for top-{} on {} ranks, this dispatcher is top-{} "
               "on {}",
               L.top_k, L.num_ranks, top_k_, comm_.size());
  MOE_CHECK_AS("dispatch",
               static_cast<int64_t>(result.batch.pair_of_entry.size()) == num_recv * top_k_ &&
                   static_cast<int64_t>(result.recv_routes.size()) == num_recv * top_k_,
               "combine: result holds {} route entries for {} received rows x top-{}",
               result.recv_routes.size(), num_recv, top_k_);
  MOE_CHECK_AS("dispatch", num_pairs == 0 || expert_out != nullptr,
               "combine: {} expert rows expected but expert_out is null", num_pairs);
  MOE_CHECK_AS("dispatch", L.num_tokens == 0 || y != nullptr, "combine: y is null");

  // One buffer, rows: [returned from other ranks: S - own][partial: R, own rows last]. The final
  // sum reads own partial rows where they lie, so they are neither sent nor copied.
  const int rank = comm_.rank();
  MOE_CHECK_AS("dispatch",
               static_cast<int>(result.recv_counts.size()) == L.num_ranks &&
                   static_cast<int>(L.send_counts.size()) == L.num_ranks,
               "combine: the result holds {} receive and {} send counts for {} ranks",
               result.recv_counts.size(), L.send_counts.size(), L.num_ranks);
  const OwnBlock send_own(L.send_counts, rank), recv_own(result.recv_counts, rank);
  MOE_CHECK_AS("dispatch",
               recv_own.total == num_recv && send_own.total == L.num_send_rows() &&
                   send_own.rows == recv_own.rows,
               "combine: the result's counts do not match its layout ({} / {} rows)",
               recv_own.total, send_own.total);
  const int64_t returned_rows = send_own.remote_rows();
  MOE_CHECK_AS("dispatch", returned_rows + num_recv < INT32_MAX,
               "combine: {} returned + {} partial rows is too many", returned_rows, num_recv);
  combine_rows_.ensure(backend_, static_cast<size_t>((returned_rows + num_recv) * hidden_));
  float* returned = combine_rows_.data();
  float* partial = combine_rows_.data() + returned_rows * hidden_;

  // partial[r] = sum_j weight_j * expert_out[pair(r, j)], j in the token's top-k order; rows in
  // the physical order of the received rows (other ranks' rows first, own rows last).
  partial_offsets_.assign(static_cast<size_t>(num_recv) + 1, 0);
  partial_src_.clear();
  partial_weights_.clear();
  int64_t row_out = 0;
  auto add_partial_rows = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int j = 0; j < top_k_; ++j) {
        const int32_t p = result.batch.pair_of_entry[r * top_k_ + j];
        if (p < 0) continue;
        partial_src_.push_back(p);
        partial_weights_.push_back(result.recv_routes[r * top_k_ + j].weight);
      }
      partial_offsets_[++row_out] = static_cast<int64_t>(partial_src_.size());
    }
  };
  add_partial_rows(0, recv_own.begin);
  add_partial_rows(recv_own.begin + recv_own.rows, num_recv);
  add_partial_rows(recv_own.begin, recv_own.begin + recv_own.rows);
  if (num_recv > 0) {
    backend_.weighted_row_sum(expert_out, hidden_, partial_src_.data(), partial_weights_.data(),
                              partial_offsets_.data(), num_recv, partial);
  }

  // The reverse exchange: received rows go back to where they came from, in the same order.
  remote_counts(L.send_counts, rank, remote_send_);
  remote_counts(result.recv_counts, rank, remote_recv_);
  exchange_rows<float>(comm_, backend_, hidden_, partial, remote_recv_, returned, remote_send_,
                       row_scratch_);

  // y[t] = sum of its returned rows in destination order (fp32, fixed order); an own row is the
  // partial row it was received as.
  final_src_.resize(L.token_rows.size());
  for (size_t i = 0; i < L.token_rows.size(); ++i) {
    const int64_t row = L.token_rows[i];
    final_src_[i] = static_cast<int32_t>(
        send_own.is_own(row)
            ? returned_rows + recv_own.physical(recv_own.begin + row - send_own.begin)
            : send_own.physical(row));
  }
  if (L.num_tokens > 0) {
    backend_.weighted_row_sum(combine_rows_.data(), hidden_, final_src_.data(), nullptr,
                              L.token_offsets.data(), L.num_tokens, y);
  }
  mark(combine_phase_);
}

}  // namespace moe::parallel
