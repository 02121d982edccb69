// Load statistics: balancedness (mean / max rank load) and max-vio (max / mean expert load - 1)
// on hand-computed cases, and the local LayerLoad view of a dispatch layout.
#include <gtest/gtest.h>

#include "kernels/common/check.h"
#include "parallel/load_stats.h"

namespace moe::parallel {
namespace {

TEST(LoadStats, BalancednessIsMeanOverMaxOfRankLoads) {
  EXPECT_DOUBLE_EQ(balancedness(std::vector<int64_t>{10, 10, 10}), 1.0);
  EXPECT_DOUBLE_EQ(balancedness(std::vector<int64_t>{30, 10}), 20.0 / 30.0);
  EXPECT_DOUBLE_EQ(balancedness(std::vector<int64_t>{8, 0, 0, 0}), 0.25);
  EXPECT_DOUBLE_EQ(balancedness(std::vector<int64_t>{0, 0}), 1.0) << "no load counts as balanced";
  EXPECT_DOUBLE_EQ(balancedness(std::vector<int64_t>{}), 1.0);
}

TEST(LoadStats, MaxViolationIsMaxOverMeanMinusOneOfExpertLoads) {
  EXPECT_DOUBLE_EQ(max_violation(std::vector<int64_t>{4, 4, 4, 4}), 0.0);
  EXPECT_DOUBLE_EQ(max_violation(std::vector<int64_t>{8, 0, 0, 0}), 3.0);
  EXPECT_DOUBLE_EQ(max_violation(std::vector<int64_t>{3, 1, 2}), 0.5);
  EXPECT_DOUBLE_EQ(max_violation(std::vector<int64_t>{0, 0, 0}), 0.0);
  EXPECT_DOUBLE_EQ(max_violation(std::vector<int64_t>{}), 0.0);
}

TEST(LoadStats, LocalLayerLoadReadsTheLayoutAndAccumulates) {
  auto p = LayerPlacement::from_rank_experts(contiguous_placement(8, 2), 8);
  std::vector<int32_t> ids = {0, 1, 2, 5, 4, 5, 6, 7};
  std::vector<float> w(8, 0.25f);
  DispatchLayout L = build_dispatch_layout(p, 0, ids, w, 2, 4);
  ExchangeStats traffic;
  traffic.rows_sent_remote = 2;
  LayerLoad load = local_layer_load(L, traffic);
  EXPECT_EQ(load.tokens_per_expert, (std::vector<int64_t>{1, 1, 1, 0, 1, 2, 1, 1}));
  EXPECT_EQ(load.tokens_per_rank, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(load.rows_per_rank, (std::vector<int64_t>{1, 2}));
  EXPECT_DOUBLE_EQ(load.balancedness(), 4.0 / 5.0);
  EXPECT_DOUBLE_EQ(load.max_violation(), 2.0 / 1.0 - 1.0);

  LayerLoad total;
  total += load;
  total += load;
  EXPECT_EQ(total.tokens_per_rank, (std::vector<int64_t>{6, 10}));
  EXPECT_EQ(total.traffic.rows_sent_remote, 4);
  LayerLoad other;
  other.tokens_per_rank = {1, 2, 3};
  EXPECT_THROW(total += other, moe::Error);
}

}  // namespace
}  // namespace moe::parallel
