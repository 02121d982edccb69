// Dispatcher pure parts: the deduplicated layout (row order, route entries, replica split) and
// receiver-side grouping, checked on hand-built cases and against a brute-force model on random
// routings; plus dispatch -> expert -> combine on one rank through the one-rank communicator.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "kernels/common/check.h"
#include "moe_layer_fixture.h"
#include "parallel/dispatcher.h"

namespace moe::parallel {
namespace {

// 8 experts, 2 ranks, contiguous: 0-3 on rank 0, 4-7 on rank 1.
LayerPlacement two_rank_placement() {
  return LayerPlacement::from_rank_experts(contiguous_placement(8, 2), 8);
}

TEST(DispatchLayout, TokenWithThreeExpertsOnOneRankSendsOneRowCarryingThreeRoutes) {
  auto p = two_rank_placement();
  std::vector<int32_t> ids = {0, 1, 2, 5};
  std::vector<float> w = {0.4f, 0.3f, 0.2f, 0.1f};
  DispatchLayout L = build_dispatch_layout(p, 0, ids, w, 1, 4);
  EXPECT_EQ(L.send_counts, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(L.send_token, (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(L.pairs_per_rank, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(L.expert_tokens, (std::vector<int64_t>{1, 1, 1, 0, 0, 1, 0, 0}));
  ASSERT_EQ(L.send_routes.size(), 8u);
  // Row 0 -> rank 0: experts 0, 1, 2 at local slots 0, 1, 2 in top-k order; entry 3 unused.
  EXPECT_EQ(L.send_routes[0].local_slot, 0);
  EXPECT_FLOAT_EQ(L.send_routes[0].weight, 0.4f);
  EXPECT_EQ(L.send_routes[1].local_slot, 1);
  EXPECT_EQ(L.send_routes[2].local_slot, 2);
  EXPECT_FLOAT_EQ(L.send_routes[2].weight, 0.2f);
  EXPECT_EQ(L.send_routes[3].local_slot, -1);
  // Row 1 -> rank 1: only entry 3 (expert 5 = local slot 1 there).
  for (int j = 0; j < 3; ++j) EXPECT_EQ(L.send_routes[4 + j].local_slot, -1);
  EXPECT_EQ(L.send_routes[7].local_slot, 1);
  EXPECT_FLOAT_EQ(L.send_routes[7].weight, 0.1f);
  EXPECT_EQ(L.token_offsets, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(L.token_rows, (std::vector<int32_t>{0, 1}));
}

TEST(DispatchLayout, RowsAreOrderedByDestinationThenTokenAndTokenRowsByDestination) {
  auto p = two_rank_placement();
  // token 0 -> rank 1 only; token 1 -> ranks 0, 1; token 2 -> rank 0 only; token 3 -> both.
  std::vector<int32_t> ids = {4, 5, 1, 6, 0, 3, 7, 2};
  std::vector<float> w(8, 0.5f);
  DispatchLayout L = build_dispatch_layout(p, 1, ids, w, 4, 2);
  EXPECT_EQ(L.send_counts, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(L.send_token, (std::vector<int32_t>{1, 2, 3, 0, 1, 3}));
  EXPECT_EQ(L.token_offsets, (std::vector<int64_t>{0, 1, 3, 4, 6}));
  EXPECT_EQ(L.token_rows, (std::vector<int32_t>{3, 0, 4, 1, 2, 5}));
  EXPECT_EQ(L.num_send_rows(), 6);
  // token 3 (ids 7, 2): row 2 on rank 0 has entry 1 (expert 2, slot 2); row 5 has entry 0.
  EXPECT_EQ(L.send_routes[2 * 2 + 0].local_slot, -1);
  EXPECT_EQ(L.send_routes[2 * 2 + 1].local_slot, 2);
  EXPECT_EQ(L.send_routes[5 * 2 + 0].local_slot, 3);
  EXPECT_EQ(L.send_routes[5 * 2 + 1].local_slot, -1);
}

TEST(DispatchLayout, ReplicasShareEachRanksPairsInTurnStartingAtTheRankOffset) {
  // Expert 0 on ranks 1 and 2; expert 1 on rank 0 only.
  auto p = LayerPlacement::from_rank_experts({{1}, {0}, {0}}, 2);
  const int64_t T = 6;
  std::vector<int32_t> ids(T, 0);
  std::vector<float> w(T, 1.0f);
  // From rank 0: the n-th pair of expert 0 goes to replica (n + 0) % 2 -> ranks 1, 2, 1, ...
  DispatchLayout from0 = build_dispatch_layout(p, 0, ids, w, T, 1);
  EXPECT_EQ(from0.send_counts, (std::vector<int64_t>{0, 3, 3}));
  EXPECT_EQ(from0.send_token, (std::vector<int32_t>{0, 2, 4, 1, 3, 5}));
  // From rank 1: (n + 1) % 2 -> ranks 2, 1, 2, ...: a replica on the source rank gets no
  // preference, so both replicas get half of every rank's pairs.
  DispatchLayout from1 = build_dispatch_layout(p, 1, ids, w, T, 1);
  EXPECT_EQ(from1.send_counts, (std::vector<int64_t>{0, 3, 3}));
  EXPECT_EQ(from1.send_token, (std::vector<int32_t>{1, 3, 5, 0, 2, 4}));
  // An odd count: rank 0's extra pair goes to rank 1, rank 1's to rank 2 (the offsets stagger).
  EXPECT_EQ(build_dispatch_layout(p, 0, ids, w, 3, 1).send_counts, (std::vector<int64_t>{0, 2, 1}));
  EXPECT_EQ(build_dispatch_layout(p, 1, ids, w, 3, 1).send_counts, (std::vector<int64_t>{0, 1, 2}));
  // Counters are per expert: tokens routed to expert 1 in between do not shift expert 0's turn.
  std::vector<int32_t> mixed = {0, 1, 1, 0};
  DispatchLayout m = build_dispatch_layout(p, 0, mixed, w, 4, 1);
  EXPECT_EQ(m.send_counts, (std::vector<int64_t>{2, 1, 1}));
  EXPECT_EQ(m.send_token, (std::vector<int32_t>{1, 2, 0, 3}));
  // Same inputs, same layout.
  DispatchLayout again = build_dispatch_layout(p, 0, ids, w, T, 1);
  EXPECT_EQ(again.send_token, from0.send_token);
  EXPECT_EQ(again.token_rows, from0.token_rows);
}

TEST(DispatchLayout, RejectsExpertIdsOutsideTheModelAndShortInputs) {
  auto p = two_rank_placement();
  std::vector<int32_t> ids = {0, 8};
  std::vector<float> w = {0.5f, 0.5f};
  EXPECT_THROW(build_dispatch_layout(p, 0, ids, w, 1, 2), moe::Error);
  ids = {0, -1};
  EXPECT_THROW(build_dispatch_layout(p, 0, ids, w, 1, 2), moe::Error);
  ids = {0, 1};
  EXPECT_THROW(build_dispatch_layout(p, 0, ids, w, 2, 2), moe::Error) << "2 tokens need 4 ids";
  EXPECT_THROW(build_dispatch_layout(p, 2, ids, w, 1, 2), moe::Error) << "rank 2 of 2";
  LayerPlacement dense;
  dense.rank_experts.assign(2, {});
  EXPECT_THROW(build_dispatch_layout(dense, 0, ids, w, 1, 2), moe::Error);
}

TEST(DispatchLayout, ZeroTokensGiveAnEmptyLayout) {
  auto p = two_rank_placement();
  DispatchLayout L = build_dispatch_layout(p, 1, {}, {}, 0, 4);
  EXPECT_EQ(L.send_counts, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(L.num_send_rows(), 0);
  EXPECT_EQ(L.token_offsets, (std::vector<int64_t>{0}));
}

// Brute force: a row per (token, destination holding one of its chosen slots), per-entry routes.
TEST(DispatchLayout, MatchesBruteForceOnRandomRoutingsAndReplicatedPlacements) {
  std::mt19937_64 gen(42);
  for (int trial = 0; trial < 40; ++trial) {
    const int N = 1 + static_cast<int>(gen() % 7);
    const int E = 4 + static_cast<int>(gen() % 40);
    const int k = 1 + static_cast<int>(gen() % std::min(E, 8));
    const int64_t T = static_cast<int64_t>(gen() % 30);
    const int rank = static_cast<int>(gen() % N);
    // Round robin plus random extra replicas.
    auto lists = round_robin_placement(E, N);
    for (int e = 0; e < E; ++e) {
      for (int r = 0; r < N; ++r) {
        if (gen() % 6 == 0 && std::find(lists[r].begin(), lists[r].end(), e) == lists[r].end()) {
          lists[r].push_back(e);
        }
      }
    }
    auto p = LayerPlacement::from_rank_experts(lists, E);
    p.validate(E, N, "random");
    std::vector<int> all(E);
    std::iota(all.begin(), all.end(), 0);
    auto routing = testing::make_routing(gen(), T, k, all);
    DispatchLayout L = build_dispatch_layout(p, rank, routing.ids, routing.weights, T, k);

    // Expected slot of each pair.
    // Expected slot of each pair: the n-th pair of expert e goes to replica (n + rank) % count.
    std::vector<Slot> chosen(T * k);
    std::vector<int64_t> seen(E, 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int j = 0; j < k; ++j) {
        const int e = routing.ids[t * k + j];
        const auto& reps = p.expert_slots[e];
        chosen[t * k + j] = reps[(seen[e]++ + rank) % reps.size()];
      }
    }
    int64_t row = 0;
    std::vector<int64_t> counts(N, 0);
    std::map<std::pair<int64_t, int>, int64_t> row_of;  // (token, dest) -> row
    for (int d = 0; d < N; ++d) {
      for (int64_t t = 0; t < T; ++t) {
        bool any = false;
        for (int j = 0; j < k; ++j) any = any || chosen[t * k + j].rank == d;
        if (!any) continue;
        ASSERT_EQ(L.send_token[row], t);
        for (int j = 0; j < k; ++j) {
          const RouteEntry& re = L.send_routes[row * k + j];
          if (chosen[t * k + j].rank == d) {
            EXPECT_EQ(re.local_slot, chosen[t * k + j].local_slot);
            EXPECT_EQ(re.weight, routing.weights[t * k + j]);
          } else {
            EXPECT_EQ(re.local_slot, -1);
          }
        }
        row_of[{t, d}] = row;
        ++counts[d];
        ++row;
      }
    }
    EXPECT_EQ(row, L.num_send_rows());
    EXPECT_EQ(counts, L.send_counts);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> want;
      for (int d = 0; d < N; ++d) {
        auto it = row_of.find({t, d});
        if (it != row_of.end()) want.push_back(static_cast<int32_t>(it->second));
      }
      std::vector<int32_t> got(L.token_rows.begin() + L.token_offsets[t],
                               L.token_rows.begin() + L.token_offsets[t + 1]);
      EXPECT_EQ(got, want) << "token " << t;
    }
    int64_t pairs = 0;
    for (int64_t v : L.pairs_per_rank) pairs += v;
    EXPECT_EQ(pairs, T * k);
  }
}

TEST(GroupBySlot, GroupsRouteEntriesBySlotThenRowAndMapsEveryEntryToItsPair) {
  // 3 received rows, k = 2, 3 local slots.
  std::vector<RouteEntry> routes = {{2, 0.1f}, {0, 0.2f},   // row 0
                                    {-1, 0.f}, {2, 0.3f},   // row 1
                                    {0, 0.4f}, {-1, 0.f}};  // row 2
  SlotGroups b = group_by_slot(routes, 3, 2, 3);
  EXPECT_EQ(b.slot_begin, (std::vector<int64_t>{0, 2, 2, 4}));
  EXPECT_EQ(b.row_index, (std::vector<int32_t>{0, 2, 0, 1}));
  EXPECT_EQ(b.pair_of_entry, (std::vector<int32_t>{2, 0, -1, 3, 1, -1}));
  EXPECT_EQ(b.num_pairs(), 4);
}

TEST(GroupBySlot, RejectsSlotsThisRankDoesNotHaveAndShortRouteArrays) {
  std::vector<RouteEntry> routes = {{3, 1.f}};
  EXPECT_THROW(group_by_slot(routes, 1, 1, 3), moe::Error);
  EXPECT_THROW(group_by_slot(routes, 2, 1, 4), moe::Error);
  SlotGroups empty = group_by_slot({}, 0, 4, 2);
  EXPECT_EQ(empty.slot_begin, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_TRUE(empty.row_index.empty());
}

TEST(DispatcherOneRank, DispatchExpertCombineEqualsTheDirectWeightedSumOfExperts) {
  const std::unique_ptr<Communicator> one = make_one_rank_communicator();
  Communicator& comm = *one;
  auto backend = kernels::make_backend("cpu", 0);
  const int64_t H = 24, I = 12, T = 9;
  const int E = 10, k = 3;
  testing::ExpertBank bank(7, H, I);
  // Experts 4 and 9 are never chosen: their groups stay empty.
  const Placement p = testing::one_layer(contiguous_placement(E, 1), E);
  auto routing = testing::make_routing(3, T, k, {0, 1, 2, 3, 5, 6, 7, 8});
  auto x = testing::random_floats(11, static_cast<size_t>(T * H), 1.0f);
  Dispatcher d(comm, *backend, H, k);
  d.set_placement(p);
  const testing::LayerRun kept = testing::run_moe_layer(d, *backend, p, 0, bank, x, T, routing);
  auto ref = testing::reference_moe_layer(*backend, bank, x, T, k, routing);
  EXPECT_LE(testing::relative_max_diff(kept.y, ref), 1e-5);
  EXPECT_EQ(kept.num_recv_rows, T) << "one rank: every token is one deduplicated row";
  EXPECT_EQ(kept.num_pairs, T * k);
  const ExchangeStats& s = kept.load.traffic;
  EXPECT_EQ(s.rows_sent_remote, 0);
  EXPECT_EQ(s.bytes_sent_remote, 0);
  EXPECT_EQ(s.bytes_remote_without_dedup, 0);
  EXPECT_EQ(s.rows_kept_local, T);
  EXPECT_EQ(s.bytes_kept_local, T * (H * 4 + k * 8) + T * H * 4);
  EXPECT_EQ(s.pairs_received, T * k);

  // Zero tokens: still a valid (empty) exchange.
  const testing::LayerRun y0 = testing::run_moe_layer(d, *backend, p, 0, bank, {}, 0, {});
  EXPECT_TRUE(y0.y.empty());
}

TEST(ExchangeStats, PlusEqualsAddsEveryField) {
  ExchangeStats a, b;
  a.rows_sent_remote = 1, a.bytes_sent_remote = 10, a.pairs_received = 3;
  b.rows_sent_remote = 2, b.bytes_sent_remote = 5, b.rows_kept_local = 4, b.pairs_remote = 6;
  b.bytes_remote_without_dedup = 7, b.rows_received = 8, b.bytes_kept_local = 9;
  a += b;
  EXPECT_EQ(a.rows_sent_remote, 3);
  EXPECT_EQ(a.bytes_sent_remote, 15);
  EXPECT_EQ(a.bytes_remote_without_dedup, 7);
  EXPECT_EQ(a.rows_kept_local, 4);
  EXPECT_EQ(a.pairs_remote, 6);
  EXPECT_EQ(a.rows_received, 8);
  EXPECT_EQ(a.bytes_kept_local, 9);
  EXPECT_EQ(a.pairs_received, 3);
}

}  // namespace
}  // namespace moe::parallel
