// Grouped-SwiGLU plan: compact layout (gather/scatter lists, aligned group starts), validation of
// the caller's groups, and the cuBLAS grouped-GEMM argument arrays (dims, leading dimensions and
// operand pointers) for each projection.
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/cuda/grouped_gemm_plan.h"

namespace moe::kernels::cuda {
namespace {

// Distinct fake weight addresses: the plan only does pointer arithmetic, never dereferences.
ExpertWeights fake_weights(uintptr_t base) {
  return {reinterpret_cast<const bf16*>(base), reinterpret_cast<const bf16*>(base + 0x1000),
          reinterpret_cast<const bf16*>(base + 0x2000)};
}

TEST(GroupedPlan, RowAlignKeepsEveryGroupStartSixteenByteAligned) {
  EXPECT_EQ(grouped_row_align(2048, 768), 1);
  EXPECT_EQ(grouped_row_align(100, 36), 2);  // 100 % 8 = 4, 36 % 8 = 4
  EXPECT_EQ(grouped_row_align(6, 8), 4);     // 6 * 4 = 24
  EXPECT_EQ(grouped_row_align(5, 3), 8);
  for (int64_t h : {1, 2, 3, 5, 6, 7, 8, 12, 100, 2048}) {
    for (int64_t i : {1, 3, 4, 36, 768}) {
      const int64_t r = grouped_row_align(h, i);
      EXPECT_EQ(r * h * 2 % 16, 0) << h << " " << i;
      EXPECT_EQ(r * i * 2 % 16, 0) << h << " " << i;
    }
  }
}

TEST(GroupedPlan, CompactLayoutSkipsEmptyGroupsAndKeepsCallerOrder) {
  // Entries 0..9; groups given out of entry order, one empty, entry 9 uncovered.
  const std::vector<int32_t> row_index = {4, 4, 0, 1, 2, 3, 7, 7, 7, 99};
  const std::vector<ExpertGroup> groups = {
      {fake_weights(0x10000), 5, 4},  // entries 5..8
      {fake_weights(0x20000), 9, 0},  // empty
      {fake_weights(0x30000), 0, 5},  // entries 0..4
  };
  const GroupedSwigluPlan plan = plan_grouped_swiglu(groups.data(), 3, row_index.data(), 16, 32);
  EXPECT_EQ(plan.row_align, 1);
  ASSERT_EQ(plan.num_gemm_groups(), 2);
  EXPECT_EQ(plan.num_entries, 9);
  EXPECT_EQ(plan.out_rows, 9);
  EXPECT_EQ(plan.num_compact_rows, 9);
  EXPECT_EQ(plan.compact_begin, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(plan.rows, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(plan.gather_src, (std::vector<int32_t>{3, 7, 7, 7, 4, 4, 0, 1, 2}));
  EXPECT_EQ(plan.scatter_dst, (std::vector<int32_t>{5, 6, 7, 8, 0, 1, 2, 3, 4}));
  EXPECT_EQ(plan.weights[0].gate, groups[0].weights.gate);
  EXPECT_EQ(plan.weights[1].down, groups[2].weights.down);
  EXPECT_EQ(plan.x_elems(), 9 * 16);
  EXPECT_EQ(plan.inter_elems(), 9 * 32);
}

TEST(GroupedPlan, PaddingRowsAreMarkedAndSkipped) {
  // hidden 100, inter 36 -> row_align 2: a 3-row group is followed by one padding row.
  const std::vector<int32_t> row_index = {0, 1, 2, 3, 4};
  const std::vector<ExpertGroup> groups = {{fake_weights(0x10000), 0, 3},
                                           {fake_weights(0x20000), 3, 2}};
  const GroupedSwigluPlan plan = plan_grouped_swiglu(groups.data(), 2, row_index.data(), 100, 36);
  EXPECT_EQ(plan.row_align, 2);
  EXPECT_EQ(plan.compact_begin, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(plan.num_compact_rows, 6);
  EXPECT_EQ(plan.gather_src, (std::vector<int32_t>{0, 1, 2, -1, 3, 4}));
  EXPECT_EQ(plan.scatter_dst, (std::vector<int32_t>{0, 1, 2, -1, 3, 4}));
}

TEST(GroupedPlan, RejectsOverlappingNegativeAndWeightlessGroups) {
  const std::vector<int32_t> row_index(10, 0);
  const std::vector<ExpertGroup> overlap = {{fake_weights(0x10000), 0, 5},
                                            {fake_weights(0x20000), 4, 3}};
  EXPECT_THROW(plan_grouped_swiglu(overlap.data(), 2, row_index.data(), 8, 8), moe::Error);
  const std::vector<ExpertGroup> negative = {{fake_weights(0x10000), 0, -1}};
  EXPECT_THROW(plan_grouped_swiglu(negative.data(), 1, row_index.data(), 8, 8), moe::Error);
  const std::vector<ExpertGroup> weightless = {{ExpertWeights{}, 0, 2}};
  EXPECT_THROW(plan_grouped_swiglu(weightless.data(), 1, row_index.data(), 8, 8), moe::Error);
  const std::vector<ExpertGroup> empty_weightless = {{ExpertWeights{}, 0, 0}};
  EXPECT_NO_THROW(plan_grouped_swiglu(empty_weightless.data(), 1, row_index.data(), 8, 8));
  const std::vector<int32_t> bad_rows = {0, -3};
  const std::vector<ExpertGroup> one = {{fake_weights(0x10000), 0, 2}};
  EXPECT_THROW(plan_grouped_swiglu(one.data(), 1, bad_rows.data(), 8, 8), moe::Error);
  EXPECT_THROW(plan_grouped_swiglu(one.data(), 1, row_index.data(), 0, 8), moe::Error);
}

TEST(GroupedPlan, NoGroupsGivesAnEmptyPlan) {
  const GroupedSwigluPlan plan = plan_grouped_swiglu(nullptr, 0, nullptr, 64, 32);
  EXPECT_EQ(plan.num_gemm_groups(), 0);
  EXPECT_EQ(plan.num_compact_rows, 0);
  const GroupedGemmArgs args = grouped_gemm_args(plan, Projection::kGate, {});
  EXPECT_EQ(args.group_count(), 0);
}

TEST(GroupedPlan, GemmArgsDescribeYEqualsXWTransposedPerProjection) {
  const int64_t H = 24, I = 40;
  const std::vector<int32_t> row_index = {0, 1, 2, 3, 4, 5};
  const std::vector<ExpertGroup> groups = {{fake_weights(0x100000), 0, 2},
                                           {fake_weights(0x200000), 2, 4}};
  const GroupedSwigluPlan plan = plan_grouped_swiglu(groups.data(), 2, row_index.data(), H, I);
  ASSERT_EQ(plan.row_align, 1);
  auto* base = reinterpret_cast<unsigned char*>(uintptr_t{0x7000000});
  GroupedScratch s{base, base + 0x100000, base + 0x200000, base + 0x300000, base + 0x400000};

  const GroupedGemmArgs gate = grouped_gemm_args(plan, Projection::kGate, s);
  ASSERT_EQ(gate.group_count(), 2);
  EXPECT_EQ(gate.m, (std::vector<int>{40, 40}));  // out features
  EXPECT_EQ(gate.k, (std::vector<int>{24, 24}));  // in features
  EXPECT_EQ(gate.n, (std::vector<int>{2, 4}));    // tokens of each expert
  EXPECT_EQ(gate.lda, (std::vector<int>{24, 24}));
  EXPECT_EQ(gate.ldb, (std::vector<int>{24, 24}));
  EXPECT_EQ(gate.ldc, (std::vector<int>{40, 40}));
  EXPECT_EQ(gate.group_size, (std::vector<int>{1, 1}));
  EXPECT_EQ(gate.alpha, (std::vector<float>{1.0f, 1.0f}));
  EXPECT_EQ(gate.beta, (std::vector<float>{0.0f, 0.0f}));
  EXPECT_EQ(gate.a[1], groups[1].weights.gate.data);
  EXPECT_EQ(gate.b[1], base + 2 * H * 2);  // x_c row 2, bf16
  EXPECT_EQ(gate.c[1], base + 0x100000 + 2 * I * 2);

  const GroupedGemmArgs up = grouped_gemm_args(plan, Projection::kUp, s);
  EXPECT_EQ(up.a[0], groups[0].weights.up.data);
  EXPECT_EQ(up.c[1], base + 0x200000 + 2 * I * 2);

  const GroupedGemmArgs down = grouped_gemm_args(plan, Projection::kDown, s);
  EXPECT_EQ(down.m, (std::vector<int>{24, 24}));
  EXPECT_EQ(down.k, (std::vector<int>{40, 40}));
  EXPECT_EQ(down.lda, (std::vector<int>{40, 40}));
  EXPECT_EQ(down.ldb, (std::vector<int>{40, 40}));
  EXPECT_EQ(down.ldc, (std::vector<int>{24, 24}));
  EXPECT_EQ(down.a[0], groups[0].weights.down.data);
  EXPECT_EQ(down.b[1], base + 0x300000 + 2 * I * 2);  // act_c row 2
  EXPECT_EQ(down.c[1], base + 0x400000 + 2 * H * 2);  // down_c row 2

  // Output blocks of different groups never overlap (cuBLAS requires disjoint C).
  std::set<const void*> starts(gate.c.begin(), gate.c.end());
  EXPECT_EQ(starts.size(), 2u);
}

}  // namespace
}  // namespace moe::kernels::cuda
