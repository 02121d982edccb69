// GEMM-shaped ops against the reference: linear (the rows == 1 GEMV path, the small-batch path
// and the blocked-sgemm path, sizes that are not multiples of any block), the dense SwiGLU MLP
// and grouped experts (with empty groups) against a per-token reference.
#include <cblas.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/common/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"

namespace moe::kernels::test {
namespace {

namespace cpu = moe::kernels::cpu;
namespace ref = moe::kernels::cpu::reference;

// linear() picks its sgemm strategy from the BLAS thread count (column chunks for OpenBLAS's
// direct small-matrix kernel at one thread, whole blocks otherwise); run both.
template <class Fn>
void with_blas_threads_1_and_2(Fn fn) {
  const int saved = openblas_get_num_threads();
  for (int threads : {1, 2}) {
    openblas_set_num_threads(threads);
    SCOPED_TRACE("BLAS threads " + std::to_string(threads));
    fn();
  }
  openblas_set_num_threads(saved);
}

struct LinearCase {
  int64_t rows, in, out;
};

void check_linear(std::mt19937& rng, LinearCase c) {
  auto x = random_floats(rng, c.rows * c.in);
  // Weights scaled by 1/sqrt(in) so outputs stay O(1) whatever the reduction length.
  auto w = random_bf16(rng, c.out * c.in, 1.0f / std::sqrt(static_cast<float>(c.in)));
  std::vector<float> got(c.rows * c.out, NAN), want(c.rows * c.out);
  cpu::linear(x.data(), w.data(), c.rows, c.in, c.out, got.data());
  ref::linear(x.data(), w.data(), c.rows, c.in, c.out, want.data());
  EXPECT_TRUE(all_close(got, want, kTolGemm))
      << "rows " << c.rows << " in " << c.in << " out " << c.out;
}

TEST(Linear, GemvPathMatchesReference) {
  std::mt19937 rng(20);
  for (LinearCase c :
       {LinearCase{1, 1, 1}, {1, 31, 17}, {1, 128, 64}, {1, 1000, 333}, {1, 3001, 65}}) {
    check_linear(rng, c);
  }
}

TEST(Linear, SmallBatchPathMatchesReference) {
  std::mt19937 rng(21);
  with_blas_threads_1_and_2([&] {
    for (LinearCase c : {LinearCase{2, 33, 9}, {3, 200, 71}, {2, 1031, 40}, {3, 2048, 300}}) {
      check_linear(rng, c);
    }
  });
}

TEST(Linear, GemmPathMatchesReferenceOnOddSizes) {
  std::mt19937 rng(22);
  // out > one W block (512 KiB of fp32 rows) with a remainder, column chunks with a remainder
  // (17 x 1024 -> chunks of 56), odd rows / in, and a batch too big for any chunking.
  with_blas_threads_1_and_2([&] {
    for (LinearCase c : {LinearCase{4, 16, 16},
                         {5, 37, 29},
                         {17, 1024, 700},
                         {64, 2048, 129},
                         {33, 3000, 50},
                         {7, 100, 5000},
                         {150, 1100, 90}}) {
      check_linear(rng, c);
    }
  });
}

TEST(Linear, EachRowOfABatchEqualsTheSingleRowResult) {
  std::mt19937 rng(23);
  const int64_t in = 517, out = 301;
  auto w = random_bf16(rng, out * in, 0.05f);
  with_blas_threads_1_and_2([&] {
    for (int64_t rows : {2, 3, 4, 9, 40}) {
      auto x = random_floats(rng, rows * in);
      std::vector<float> batch(rows * out), single(out);
      cpu::linear(x.data(), w.data(), rows, in, out, batch.data());
      for (int64_t r = 0; r < rows; ++r) {
        cpu::linear(x.data() + r * in, w.data(), 1, in, out, single.data());
        EXPECT_TRUE(all_close(batch.data() + r * out, single.data(), out, kTolGemm))
            << "rows " << rows << " row " << r;
      }
    }
  });
}

TEST(Linear, ZeroRowsLeavesOutputUntouched) {
  std::vector<bf16> w(12);
  std::vector<float> y(4, 7.0f);
  cpu::linear(nullptr, w.data(), 0, 3, 4, y.data());
  for (float v : y) EXPECT_EQ(v, 7.0f);
}

TEST(SwigluMlp, MatchesReference) {
  std::mt19937 rng(24);
  const int64_t hidden = 96, inter = 53;
  auto gate = random_bf16(rng, inter * hidden, 0.2f);
  auto up = random_bf16(rng, inter * hidden, 0.2f);
  auto down = random_bf16(rng, hidden * inter, 0.2f);
  ExpertWeights w{gate.data(), up.data(), down.data()};
  for (int64_t rows : {1, 2, 5, 31}) {
    auto x = random_floats(rng, rows * hidden);
    std::vector<float> got(rows * hidden), want(rows * hidden);
    cpu::swiglu_mlp(x.data(), w, rows, hidden, inter, got.data());
    ref::swiglu_mlp(x.data(), w, rows, hidden, inter, want.data());
    EXPECT_TRUE(all_close(got, want, kTolGemm)) << "rows " << rows;
  }
}

TEST(GroupedExperts, EmptyGroupsAndRepeatedRowsMatchPerTokenReference) {
  std::mt19937 rng(25);
  // hidden >= 512 so gate/up take the chunked direct-sgemm route at one BLAS thread.
  const int64_t hidden = 520, inter = 41, num_rows = 12;
  const int64_t num_experts = 6;
  std::vector<std::vector<bf16>> weights;
  for (int64_t e = 0; e < 3 * num_experts; ++e) {
    weights.push_back(random_bf16(rng, inter * hidden, 0.15f));
  }
  // counts: GEMM-sized, empty, one row (GEMV), empty, small batch, larger batch.
  const std::vector<int64_t> counts = {9, 0, 1, 0, 3, 20};
  std::vector<ExpertGroup> groups;
  int64_t p = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    groups.push_back({{weights[3 * e].data(), weights[3 * e + 1].data(), weights[3 * e + 2].data()},
                      p,
                      counts[e]});
    p += counts[e];
  }
  std::uniform_int_distribution<int32_t> row(0, num_rows - 1);
  std::vector<int32_t> row_index(p);
  for (auto& r : row_index) r = row(rng);
  auto x = random_floats(rng, num_rows * hidden);
  std::vector<float> want(p * hidden);
  ref::grouped_expert_swiglu(x.data(), hidden, inter, groups.data(), groups.size(),
                             row_index.data(), want.data());
  with_blas_threads_1_and_2([&] {
    std::vector<float> got(p * hidden, NAN);
    cpu::grouped_expert_swiglu(x.data(), hidden, inter, groups.data(), groups.size(),
                               row_index.data(), got.data());
    EXPECT_TRUE(all_close(got, want, kTolGemm));
  });
}

TEST(GroupedExperts, GroupsOutOfOrderWriteOnlyTheirOwnRange) {
  std::mt19937 rng(26);
  const int64_t hidden = 16, inter = 8;
  auto a = random_bf16(rng, 3 * inter * hidden, 0.3f);
  auto b = random_bf16(rng, 3 * inter * hidden, 0.3f);
  const int64_t n = inter * hidden;
  ExpertWeights wa{a.data(), a.data() + n, a.data() + 2 * n};
  ExpertWeights wb{b.data(), b.data() + n, b.data() + 2 * n};
  // Entries 0..1 -> b, 2..5 -> a, entry 6 belongs to no group and must stay untouched.
  std::vector<ExpertGroup> groups = {{wa, 2, 4}, {wb, 0, 2}};
  std::vector<int32_t> row_index = {3, 3, 0, 1, 2, 3, 0};
  auto x = random_floats(rng, 4 * hidden);
  std::vector<float> got(7 * hidden, 5.0f), want(7 * hidden, 5.0f);
  cpu::grouped_expert_swiglu(x.data(), hidden, inter, groups.data(), 2, row_index.data(),
                             got.data());
  ref::grouped_expert_swiglu(x.data(), hidden, inter, groups.data(), 2, row_index.data(),
                             want.data());
  EXPECT_TRUE(all_close(got, want, kTolGemm));
  for (int64_t j = 0; j < hidden; ++j) EXPECT_EQ(got[6 * hidden + j], 5.0f);
  // Rows 0 and 1 both read x[3] through expert b: identical outputs.
  for (int64_t j = 0; j < hidden; ++j) EXPECT_EQ(got[j], got[hidden + j]);
}

TEST(GroupedExperts, NoGroupsWritesNothing) {
  std::vector<float> x(8, 1.0f), out(8, -7.0f);
  const int32_t row = 0;
  EXPECT_NO_THROW(cpu::grouped_expert_swiglu(x.data(), 8, 8, nullptr, 0, &row, out.data()));
  EXPECT_EQ(out, std::vector<float>(8, -7.0f));
}

}  // namespace
}  // namespace moe::kernels::test
