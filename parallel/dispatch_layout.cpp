// The sequential layout specification (dispatch_layout.h): one pass over the pairs choosing
// replicas and destinations, one over the tokens laying rows out; grouping by a counting sort.
#include "parallel/dispatch_layout.h"

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
  row_bytes_sent_remote += o.row_bytes_sent_remote;
  collectives += o.collectives;
  rows_sent_inter_node += o.rows_sent_inter_node;
  bytes_sent_inter_node += o.bytes_sent_inter_node;
  return *this;
}

WireBytes WireBytes::of(kernels::WireDtype dispatch, kernels::WireDtype combine, int64_t hidden,
                        int top_k) {
  WireBytes b;
  b.dispatch_row = kernels::wire::row_bytes(dispatch, hidden);
  b.routes = top_k * static_cast<int64_t>(sizeof(RouteEntry));
  b.combine_row = kernels::wire::row_bytes(combine, hidden);
  return b;
}

ExchangeStats exchange_stats(int rank, std::span<const int64_t> send_rows,
                             std::span<const int64_t> send_pairs,
                             std::span<const int64_t> recv_rows,
                             std::span<const int64_t> recv_pairs, const WireBytes& bytes,
                             const NodeLayout* nodes) {
  // Dispatch sends rows + routes, combine returns one partial row per received row.
  const int64_t sent_local = send_rows[rank];
  const int64_t recv_local = recv_rows[rank];
  const int64_t num_recv = sum(recv_rows);
  ExchangeStats st;
  st.rows_sent_remote = sum(send_rows) - sent_local;
  st.rows_kept_local = sent_local;
  st.pairs_remote = sum(send_pairs) - send_pairs[rank];
  st.rows_received = num_recv;
  st.pairs_received = sum(recv_pairs);
  st.row_bytes_sent_remote =
      st.rows_sent_remote * bytes.dispatch_row + (num_recv - recv_local) * bytes.combine_row;
  st.bytes_sent_remote = st.row_bytes_sent_remote + st.rows_sent_remote * bytes.routes;
  st.bytes_kept_local =
      sent_local * (bytes.dispatch_row + bytes.routes) + recv_local * bytes.combine_row;
  st.bytes_remote_without_dedup =
      st.pairs_remote * (bytes.dispatch_row + static_cast<int64_t>(sizeof(RouteEntry))) +
      (sum(recv_pairs) - recv_pairs[rank]) * bytes.combine_row;
  if (nodes != nullptr) {
    int64_t back_rows = 0;  // rows this rank returns to other nodes
    for (size_t p = 0; p < send_rows.size(); ++p) {
      if (nodes->node_of(static_cast<int>(p)) == nodes->node_of(rank)) continue;
      st.rows_sent_inter_node += send_rows[p];
      back_rows += recv_rows[p];
    }
    st.bytes_sent_inter_node = st.rows_sent_inter_node * (bytes.dispatch_row + bytes.routes) +
                               back_rows * bytes.combine_row;
  }
  return st;
}

namespace {

void check_layout_inputs(const LayerPlacement& placement, int rank,
                         std::span<const int32_t> topk_ids, std::span<const float> topk_weights,
                         int64_t num_tokens, int top_k) {
  const int num_ranks = placement.num_ranks();
  MOE_CHECK_AS("dispatch", num_ranks >= 1 && rank >= 0 && rank < num_ranks,
               "layout: rank {} outside a placement of {} ranks", rank, num_ranks);
  MOE_CHECK_AS("dispatch", placement.num_experts() >= 1,
               "layout: the placement has no experts (dense layer?)");
  MOE_CHECK_AS("dispatch", top_k >= 1, "layout: top_k must be >= 1, got {}", top_k);
  MOE_CHECK_AS("dispatch", num_tokens >= 0 && num_tokens * top_k < INT32_MAX,
               "layout: {} tokens x top-{} is outside the supported range", num_tokens, top_k);
  const int64_t num_pairs = num_tokens * top_k;
  MOE_CHECK_AS("dispatch",
               static_cast<int64_t>(topk_ids.size()) >= num_pairs &&
                   static_cast<int64_t>(topk_weights.size()) >= num_pairs,
               "layout: {} tokens x top-{} needs {} ids and weights, got {} and {}", num_tokens,
               top_k, num_pairs, topk_ids.size(), topk_weights.size());
}

// Pass 1: the slot of every (token, k) pair (pair_slots[p]) and each token's ascending distinct
// destinations (token_dests, offsets in L.token_offsets); counts into L.
void choose_destinations(const LayerPlacement& placement, int rank,
                         std::span<const int32_t> topk_ids, DispatchLayout& L,
                         std::vector<Slot>& pair_slots, std::vector<int32_t>& token_dests) {
  const int num_experts = placement.num_experts(), top_k = L.top_k;
  // Replicas share an expert's pairs by the one split rule (placement.h: ReplicaSplit).
  ReplicaSplit split(placement, rank);
  pair_slots.resize(static_cast<size_t>(L.num_tokens * top_k));
  token_dests.reserve(pair_slots.size());
  std::vector<int32_t> dests(top_k);
  for (int64_t t = 0; t < L.num_tokens; ++t) {
    for (int j = 0; j < top_k; ++j) {
      const int64_t p = t * top_k + j;
      const int32_t e = topk_ids[p];
      MOE_CHECK_AS("dispatch", e >= 0 && e < num_experts,
                   "layout: token {} routes to expert {}, but experts are 0..{}", t, e,
                   num_experts - 1);
      MOE_CHECK_AS("dispatch", !placement.expert_slots[e].empty(), "layout: expert {} has no slot",
                   e);
      pair_slots[p] = split.next(e);
      dests[j] = pair_slots[p].rank;
      ++L.pairs_per_rank[dests[j]];
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
}

}  // namespace

DispatchLayout build_dispatch_layout(const LayerPlacement& placement, int rank,
                                     std::span<const int32_t> topk_ids,
                                     std::span<const float> topk_weights, int64_t num_tokens,
                                     int top_k) {
  check_layout_inputs(placement, rank, topk_ids, topk_weights, num_tokens, top_k);
  const int num_ranks = placement.num_ranks();
  DispatchLayout L;
  L.num_ranks = num_ranks;
  L.top_k = top_k;
  L.num_tokens = num_tokens;
  L.send_counts.assign(num_ranks, 0);
  L.pairs_per_rank.assign(num_ranks, 0);
  L.expert_tokens.assign(placement.num_experts(), 0);
  L.token_offsets.assign(num_tokens + 1, 0);
  std::vector<Slot> pair_slots;
  std::vector<int32_t> token_dests;  // [S] destinations of each token, in token order
  choose_destinations(placement, rank, topk_ids, L, pair_slots, token_dests);

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
        if (pair_slots[p].rank == d)
          routes[j] = RouteEntry{pair_slots[p].local_slot, topk_weights[p]};
      }
    }
  }
  return L;
}

SlotGroups group_by_slot(std::span<const RouteEntry> recv_routes, int64_t num_recv_rows, int top_k,
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
  SlotGroups b;
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

}  // namespace moe::parallel
