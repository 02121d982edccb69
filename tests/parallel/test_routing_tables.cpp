// Routing tables from a placement (parallel/routing_tables.h), on a hand-computed case: 4 ranks
// in 2 nodes of 2, 6 experts, expert 0 on both nodes (ranks 0 and 2).
#include <gtest/gtest.h>

#include "parallel/routing_tables.h"

namespace moe::parallel {
namespace {

LayerPlacement four_ranks() {
  return LayerPlacement::from_rank_experts({{0, 1}, {2, 3}, {4, 0}, {5}}, 6);
}

NodeLayout rank3_of_two_nodes() {
  return node_layout_for_ranks_per_node(4, 3, 2);  // node 1, local rank 1
}

TEST(RoutingTables, FlatRoutingListsEveryReplicaWhereThePlacementPutsIt) {
  const RoutingArrays a = flat_routing(four_ranks());
  EXPECT_EQ(a.begin, (std::vector<int32_t>{0, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(a.ranks, (std::vector<int32_t>{0, 2, 0, 1, 1, 2, 3}));
  EXPECT_EQ(a.slots, (std::vector<int32_t>{0, 1, 1, 0, 1, 0, 0}));
  EXPECT_EQ(a.num_slots, (std::vector<int32_t>{2, 2, 2, 1}));
}

// Rank 3's proxies are the local-index-1 ranks 1 (node 0) and 3 (node 1); an expert's slot is its
// id, and expert 0 is reached once per node.
TEST(RoutingTables, ProxyRoutingSendsEachExpertToItsNodesProxyOnce) {
  const RoutingArrays a = proxy_routing(four_ranks(), rank3_of_two_nodes());
  EXPECT_EQ(a.begin, (std::vector<int32_t>{0, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(a.ranks, (std::vector<int32_t>{1, 3, 1, 1, 1, 3, 3}));
  EXPECT_EQ(a.slots, (std::vector<int32_t>{0, 0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(a.num_slots, (std::vector<int32_t>{6, 6, 6, 6}));
  // A rank with local index 0 uses ranks 0 and 2.
  const RoutingArrays b = proxy_routing(four_ranks(), node_layout_for_ranks_per_node(4, 0, 2));
  EXPECT_EQ(b.ranks, (std::vector<int32_t>{0, 2, 0, 0, 0, 2, 2}));
}

TEST(RoutingTables, NodePartKeepsTheNodesRanksByLocalIndexAndTheirSlots) {
  const LayerPlacement part = node_part(four_ranks(), rank3_of_two_nodes());
  EXPECT_EQ(part.rank_experts, (std::vector<std::vector<int>>{{4, 0}, {5}}));
  const RoutingArrays a = flat_routing(part);
  EXPECT_EQ(a.begin, (std::vector<int32_t>{0, 1, 1, 1, 1, 2, 3}));  // 1, 2, 3: elsewhere
  EXPECT_EQ(a.ranks, (std::vector<int32_t>{0, 0, 1}));
  EXPECT_EQ(a.slots, (std::vector<int32_t>{1, 0, 0}));
  EXPECT_EQ(a.num_slots, (std::vector<int32_t>{2, 1}));
}

}  // namespace
}  // namespace moe::parallel
