// NodeLayout: node ids or a ranks-per-node count become equal contiguous nodes, and every other
// arrangement is refused with the sizes or ranks that break it.
#include <gtest/gtest.h>

#include <vector>

#include "parallel/communicator.h"
#include "parallel/node_layout.h"
#include "tests/common/expect_error.h"

namespace moe::parallel {
namespace {

TEST(NodeLayout, ContiguousEqualNodesFromAnyLabels) {
  const std::vector<int> ids = {7, 7, 7, 2, 2, 2};  // labels need not be 0..n-1
  for (int r = 0; r < 6; ++r) {
    const NodeLayout l = node_layout_from_ids(ids, r, "test");
    EXPECT_EQ(l.num_nodes, 2);
    EXPECT_EQ(l.local_size, 3);
    EXPECT_EQ(l.node, r / 3);
    EXPECT_EQ(l.local_rank, r % 3);
    EXPECT_EQ(l.node_of(5), 1);
    EXPECT_EQ(l.first_rank(1), 3);
    EXPECT_EQ(l.world_size(), 6);
  }
  EXPECT_EQ(node_layout_from_ids(ids, 0, "test").describe(), "2 nodes x 3 ranks");
  EXPECT_EQ(node_layout_from_ids(std::vector<int>{0}, 0, "test").describe(), "1 node x 1 rank");
}

TEST(NodeLayout, UnequalNodesAreAMismatchNamingTheirSizes) {
  const std::string e = test::expect_error("comm", [] {
    node_layout_from_ids(std::vector<int>{0, 0, 0, 1}, 0, "from MPI_Comm_split_type");
  });
  EXPECT_NE(e.find("mismatched node layout (from MPI_Comm_split_type): nodes hold 3, 1 ranks"),
            std::string::npos)
      << e;
}

TEST(NodeLayout, InterleavedNodesAreAMismatchNamingTheRank) {
  const std::string e = test::expect_error("comm", [] {
    node_layout_from_ids(std::vector<int>{0, 1, 0, 1}, 1, "x");
  });
  EXPECT_NE(e.find("the ranks of node 0 are not consecutive (rank 2"), std::string::npos) << e;
}

TEST(NodeLayout, RanksPerNodeMustDivideTheWorldSize) {
  const NodeLayout l = node_layout_for_ranks_per_node(8, 5, 4);
  EXPECT_EQ(l.num_nodes, 2);
  EXPECT_EQ(l.node, 1);
  EXPECT_EQ(l.local_rank, 1);
  const std::string e =
      test::expect_error("config", [] { node_layout_for_ranks_per_node(6, 0, 4); });
  EXPECT_NE(e.find("--ranks-per-node 4 does not divide the world size 6"), std::string::npos) << e;
  test::expect_error("config", [] { node_layout_for_ranks_per_node(4, 0, 0); });
}

TEST(NodeLayout, OneProcessAcceptsOnlyOneRankPerNode) {
  CommOptions o;
  o.ranks_per_node = 1;
  EXPECT_EQ(make_host_communicator(o)->node_layout().num_nodes, 1);
  o.ranks_per_node = 2;
  const std::string e = test::expect_error("config", [&] { make_host_communicator(o); });
  EXPECT_NE(e.find("does not divide the world size 1"), std::string::npos) << e;
}

}  // namespace
}  // namespace moe::parallel
