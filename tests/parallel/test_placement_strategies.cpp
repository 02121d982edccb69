// Load-aware strategies on hand-computed cases (load_balanced, replica counts, replicated and its
// hierarchical variant, coactivation) and the explicit-YAML writer's round trip through the
// loader. Every result is checked to be a valid placement with equal slot counts per rank.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "kernels/common/check.h"
#include "parallel/placement.h"
#include "parallel/placement_strategies.h"

namespace moe::parallel {
namespace {

void expect_valid(const RankLists& lists, int num_experts, int slots_per_rank) {
  LayerPlacement p = LayerPlacement::from_rank_experts(lists, num_experts);
  p.validate(num_experts, static_cast<int>(lists.size()), "test");
  for (const auto& l : lists) EXPECT_EQ(static_cast<int>(l.size()), slots_per_rank);
}

TEST(LoadBalanced, HeaviestFirstOntoTheLightestRankWithEqualSlotCounts) {
  // Loads 10, 9, ..., 3 over 2 ranks, 4 slots each: 10->r0, 9->r1, 8->r1 (9 < 10), 7->r0 (10 <
  // 17), 6->r0 (17 = 17, lower rank), 5->r1 (17 < 23), 4->r1 (22 < 23), r1 is full: 3->r0.
  std::vector<double> load = {3, 4, 5, 6, 7, 8, 9, 10};
  RankLists lists = load_balanced_placement(load, 2);
  expect_valid(lists, 8, 4);
  // Experts are indices: load 10 is expert 7, 9 is 6, ...
  EXPECT_EQ(lists[0], (std::vector<int>{7, 4, 3, 0}));
  EXPECT_EQ(lists[1], (std::vector<int>{6, 5, 2, 1}));
  EXPECT_DOUBLE_EQ(expected_balancedness(lists, load), 26.0 / 26.0);
}

TEST(LoadBalanced, UnevenShardsGiveTheExtraSlotToTheLightestRank) {
  std::vector<double> load(7, 1.0);
  RankLists lists = load_balanced_placement(load, 3);
  EXPECT_EQ(lists[0].size(), 3u);
  EXPECT_EQ(lists[1].size(), 2u);
  EXPECT_EQ(lists[2].size(), 2u);
  // Loads 4, 1 x 8 on 4 ranks (2 slots each, one rank 3): the extra slot goes to a light rank
  // (rank 1, when it is the lightest with a slot to spare), so the heavy rank keeps two slots.
  std::vector<double> skew = {4, 1, 1, 1, 1, 1, 1, 1, 1};
  RankLists s4 = load_balanced_placement(skew, 4);
  EXPECT_EQ(s4[0], (std::vector<int>{0, 8}));
  EXPECT_EQ(s4[1].size() + s4[2].size() + s4[3].size(), 7u);
  EXPECT_DOUBLE_EQ(expected_balancedness(s4, skew), 3.0 / 5.0);
  RankLists wide = load_balanced_placement(load, 9);
  LayerPlacement::from_rank_experts(wide, 7).validate(7, 9, "wide");
  EXPECT_TRUE(wide[7].empty() && wide[8].empty());
  EXPECT_THROW(load_balanced_placement(std::vector<double>{1, -1}, 2), moe::Error);
}

TEST(ReplicaCounts, EachExtraSlotGoesToTheHighestLoadPerReplica) {
  // 12, 5, 3, 1 with 3 extra: 12 -> 2 replicas (6 each); 6 > 5 -> 3 replicas (4 each); 5 > 4 ->
  // expert 1 gets its second.
  std::vector<double> load = {12, 5, 3, 1};
  EXPECT_EQ(replica_counts(load, 3, 8), (std::vector<int>{3, 2, 1, 1}));
  // Capped at max_replicas (one per rank).
  EXPECT_EQ(replica_counts(load, 3, 2), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_THROW(replica_counts(load, 5, 2), moe::Error);  // 4 experts x 1 extra at most
}

TEST(Replicated, HotExpertSplitOverRanksGivesPerfectBalanceOnAHandCase) {
  // Expert 0 carries 6, experts 1..6 carry 1 each: 12 in all over 3 ranks = 4 each. With 2
  // extra slots expert 0 gets 3 replicas of 2, then 3 slots per rank: {0, 1, 2}, {0, 3, 4}...
  std::vector<double> load = {6, 1, 1, 1, 1, 1, 1};
  RankLists lists = replicated_placement(load, 3, 2);
  expect_valid(lists, 7, 3);
  for (const auto& l : lists) EXPECT_EQ(l[0], 0);  // one replica of the hot expert per rank
  EXPECT_DOUBLE_EQ(expected_balancedness(lists, load), 1.0);
  // Without replicas, slot counts of 2 or 3 per rank leave one light expert beside the hot one
  // (the extra slot goes to a light rank as the packing goes): 7 of 12 on rank 0.
  EXPECT_NEAR(expected_balancedness(load_balanced_placement(load, 3), load), 4.0 / 7.0, 1e-12);
}

TEST(Replicated, ZipfLoadsReachNearPerfectBalanceWithEightExtraSlots) {
  std::vector<double> load(128);
  for (int i = 0; i < 128; ++i) load[i] = 1.0 / std::pow(i + 1, 1.2);
  RankLists lists = replicated_placement(load, 8, 8);
  expect_valid(lists, 128, 17);
  std::vector<int> count(128, 0);
  for (const auto& l : lists) {
    for (int e : l) ++count[e];
  }
  EXPECT_GT(count[0], 1);
  EXPECT_GE(expected_balancedness(lists, load), 0.99);
  EXPECT_LT(expected_balancedness(load_balanced_placement(load, 8), load), 0.99);
}

TEST(Replicated, HierarchicalKeepsEveryReplicaOfAnExpertInsideOneNode) {
  std::vector<double> load(32);
  for (int i = 0; i < 32; ++i) load[i] = 1.0 / (i + 1);
  RankLists lists = replicated_placement(load, 8, 8, 4);  // 2 nodes of 4 ranks, 5 slots each
  expect_valid(lists, 32, 5);
  for (int e = 0; e < 32; ++e) {
    std::set<int> nodes;
    for (int r = 0; r < 8; ++r) {
      if (std::find(lists[r].begin(), lists[r].end(), e) != lists[r].end()) nodes.insert(r / 4);
    }
    EXPECT_EQ(nodes.size(), 1u) << "expert " << e;
  }
  // Nodes carry equal expert counts (16 each) and each gets 4 of the 8 extra slots.
  for (int m = 0; m < 2; ++m) {
    std::set<int> distinct;
    for (int r = 4 * m; r < 4 * m + 4; ++r) distinct.insert(lists[r].begin(), lists[r].end());
    EXPECT_EQ(distinct.size(), 16u);
  }
  EXPECT_GE(expected_balancedness(lists, load), 0.95);
  EXPECT_THROW(replicated_placement(load, 8, 8, 3), moe::Error);  // 8 ranks in nodes of 3
}

TEST(Coactivation, GroupsExpertsThatFireTogetherWithinTheBalanceBound) {
  // 8 experts, 2 ranks; tokens always pick {0,1,2,3} or {4,5,6,7} (equal loads): load_balanced
  // alternates by id ({0,2,4,6} on rank 0), coactivation must put each group on one rank.
  std::vector<int32_t> ids;
  for (int t = 0; t < 100; ++t) {
    const int base = (t % 2) * 4;
    for (int j = 0; j < 4; ++j) ids.push_back(base + j);
  }
  Coactivation co;
  co.num_experts = 8;
  add_coactivation(co, ids, 4);
  EXPECT_DOUBLE_EQ(co.at(0, 2), 50.0);
  EXPECT_DOUBLE_EQ(co.at(0, 4), 0.0);
  EXPECT_EQ(load_balanced_placement(std::vector<double>(8, 50.0), 2)[0],
            (std::vector<int>{0, 2, 4, 6}));
  std::vector<double> load(8, 50.0);
  RankLists lists = coactivation_placement(load, co, 2, 0.9);
  expect_valid(lists, 8, 4);
  for (const auto& l : lists) {
    for (int e : l) EXPECT_EQ(e / 4, l[0] / 4) << "rank mixes the two groups";
  }
  EXPECT_DOUBLE_EQ(expected_balancedness(lists, load), 1.0);
}

TEST(Coactivation, NeverLeavesTheBalanceBound) {
  // Group {0, 1} fires together but 0 and 1 are the two heaviest: putting them together would
  // give balancedness 0.5 / 0.8 < 0.9, so they stay apart.
  std::vector<int32_t> ids;
  for (int t = 0; t < 10; ++t) ids.insert(ids.end(), {0, 1});
  for (int t = 0; t < 2; ++t) ids.insert(ids.end(), {2, 3});
  Coactivation co;
  co.num_experts = 4;
  add_coactivation(co, ids, 2);
  std::vector<double> load = {10, 10, 2, 2};
  RankLists lists = coactivation_placement(load, co, 2, 0.9);
  expect_valid(lists, 4, 2);
  EXPECT_GE(expected_balancedness(lists, load), 0.9);
  // With a loose bound (0.5) the pair may share a rank.
  RankLists loose = coactivation_placement(load, co, 2, 0.5);
  const bool together = std::find(loose[0].begin(), loose[0].end(), 1) != loose[0].end()
                            ? std::find(loose[0].begin(), loose[0].end(), 0) != loose[0].end()
                            : std::find(loose[1].begin(), loose[1].end(), 0) != loose[1].end();
  EXPECT_TRUE(together);
}

TEST(PlacementYamlWriter, RoundTripsThroughTheLoaderWithReplicasAndEmptyRanks) {
  std::vector<std::pair<int, RankLists>> layers = {{1, {{0, 3}, {1, 2, 0}, {}}},
                                                   {3, {{2}, {0, 1}, {3}}}};
  const std::string path = ::testing::TempDir() + "moe_written_placement.yaml";
  write_placement_yaml(path, 3, layers, {"fitted by a test"});
  PlacementSpec spec = load_placement_spec(path);
  EXPECT_EQ(spec.strategy, "explicit");
  ASSERT_TRUE(spec.num_ranks.has_value());
  EXPECT_EQ(*spec.num_ranks, 3);
  EXPECT_EQ(spec.layers, layers);
  Placement p = Placement::build(spec, {false, true, false, true}, 4, 3);
  EXPECT_EQ(p.layer(1).rank_experts, layers[0].second);
  EXPECT_EQ(p.layer(3).expert_slots[2].size(), 1u);
  EXPECT_EQ(p.layer(1).expert_slots[0].size(), 2u);
  EXPECT_THROW(placement_yaml(2, layers), moe::Error);  // 3 lists for a 2-rank file
}

}  // namespace
}  // namespace moe::parallel
