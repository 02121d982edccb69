// Row-wise ops against the reference: embedding, RMSNorm, RoPE (plus a hand-computed pin of the
// reference RoPE itself), SiLU*up, residual add, row gather, argmax; the usable cores.
#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/common/check.h"
#include "kernels/cpu/host.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"

namespace moe::kernels::test {
namespace {

namespace cpu = moe::kernels::cpu;
namespace ref = moe::kernels::cpu::reference;

TEST(Embedding, LooksUpRowsLikeReference) {
  std::mt19937 rng(1);
  const int64_t vocab = 37, hidden = 19, n = 23;
  auto table = random_bf16(rng, vocab * hidden);
  std::vector<int32_t> ids(n);
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  for (auto& i : ids) i = id(rng);
  ids[0] = 0;
  ids[1] = vocab - 1;
  std::vector<float> got(n * hidden), want(n * hidden);
  cpu::embedding(table.data(), vocab, hidden, ids.data(), n, got.data());
  ref::embedding(table.data(), vocab, hidden, ids.data(), n, want.data());
  EXPECT_EQ(got, want);
}

TEST(Embedding, OutOfRangeIdThrowsErrorNamingTheId) {
  const int64_t vocab = 10, hidden = 4;
  std::vector<bf16> table(vocab * hidden);
  std::vector<float> out(3 * hidden, 42.0f);
  for (int32_t bad : {10, -1, 123456}) {
    std::vector<int32_t> ids = {1, bad, 2};
    try {
      cpu::embedding(table.data(), vocab, hidden, ids.data(), 3, out.data());
      FAIL() << "no error for id " << bad;
    } catch (const moe::Error& e) {
      EXPECT_NE(e.message().find("id " + std::to_string(bad)), std::string::npos) << e.what();
      EXPECT_NE(e.message().find("[0, 10)"), std::string::npos) << e.what();
    }
  }
  // Nothing was written before the check failed.
  for (float v : out) EXPECT_EQ(v, 42.0f);
}

TEST(Embedding, ZeroTokensWritesNothing) {
  std::vector<bf16> table(4, float_to_bf16(1.0f));
  std::vector<float> out(4, -7.0f);
  const int32_t id = 1;
  EXPECT_NO_THROW(cpu::embedding(table.data(), 2, 2, &id, 0, out.data()));
  EXPECT_EQ(out, std::vector<float>(4, -7.0f));
}

TEST(RmsNorm, MatchesReferenceOnOddSizes) {
  std::mt19937 rng(2);
  for (int64_t dim : {1, 7, 64, 100, 2049}) {
    const int64_t rows = 5;
    auto x = random_floats(rng, rows * dim, -3.0f, 3.0f);
    auto w = random_bf16(rng, dim, 2.0f);
    std::vector<float> got(rows * dim), want(rows * dim);
    cpu::rmsnorm(x.data(), w.data(), rows, dim, 1e-6f, got.data());
    ref::rmsnorm(x.data(), w.data(), rows, dim, 1e-6f, want.data());
    EXPECT_TRUE(all_close(got, want, kTolElementwise)) << "dim " << dim;
  }
}

TEST(RmsNorm, InPlaceEqualsOutOfPlace) {
  std::mt19937 rng(3);
  const int64_t rows = 3, dim = 129;
  auto x = random_floats(rng, rows * dim);
  auto w = random_bf16(rng, dim);
  std::vector<float> out(rows * dim);
  cpu::rmsnorm(x.data(), w.data(), rows, dim, 1e-5f, out.data());
  cpu::rmsnorm(x.data(), w.data(), rows, dim, 1e-5f, x.data());
  EXPECT_EQ(x, out);
}

TEST(RmsNorm, AllZeroRowGivesZerosNotNan) {
  const int64_t dim = 8;
  std::vector<float> x(dim, 0.0f), y(dim, 1.0f);
  std::vector<bf16> w(dim, float_to_bf16(1.0f));
  cpu::rmsnorm(x.data(), w.data(), 1, dim, 1e-6f, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(Rope, ReferenceMatchesHandComputedValue) {
  // head_dim 4, theta 1e4: inv_freq = [1, 1e4^-0.5 = 0.01]; position 1; x = [1, 2, 3, 4].
  // out[0] = 1 cos(1) - 3 sin(1)        out[2] = 3 cos(1) + 1 sin(1)
  // out[1] = 2 cos(.01) - 4 sin(.01)    out[3] = 4 cos(.01) + 2 sin(.01)
  std::vector<float> x = {1, 2, 3, 4, 1, 2, 3, 4};  // two heads, same values
  const int32_t pos = 1;
  ref::rope(x.data(), &pos, 1, 2, 4, 10000.0);
  const double want[4] = {-1.9841106485555495, 1.959900668395159, 2.4623779024123156,
                          4.019799667896923};
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(x[h * 4 + i], want[i], 2e-6) << "h " << h << " i " << i;
  }
}

TEST(Rope, PositionZeroIsIdentity) {
  std::mt19937 rng(4);
  auto x = random_floats(rng, 3 * 64);
  auto y = x;
  const int32_t pos = 0;
  cpu::rope(y.data(), &pos, 1, 3, 64, 1e6);
  EXPECT_EQ(x, y);
}

TEST(Rope, MatchesReferenceAtManyPositions) {
  std::mt19937 rng(5);
  const int64_t rows = 9, heads = 5, head_dim = 128;
  for (double theta : {1e4, 1e6}) {
    auto x = random_floats(rng, rows * heads * head_dim);
    std::vector<int32_t> pos = {0, 1, 2, 17, 255, 1000, 4097, 32767, 40959};
    auto got = x, want = x;
    cpu::rope(got.data(), pos.data(), rows, heads, head_dim, theta);
    ref::rope(want.data(), pos.data(), rows, heads, head_dim, theta);
    EXPECT_TRUE(all_close(got, want, kTolElementwise)) << "theta " << theta;
  }
}

TEST(Rope, PreservesNormOfEachHead) {
  std::mt19937 rng(6);
  const int64_t heads = 4, head_dim = 32;
  auto x = random_floats(rng, heads * head_dim);
  auto y = x;
  const int32_t pos = 12345;
  cpu::rope(y.data(), &pos, 1, heads, head_dim, 1e6);
  for (int64_t h = 0; h < heads; ++h) {
    double nx = 0, ny = 0;
    for (int64_t d = 0; d < head_dim; ++d) {
      nx += x[h * head_dim + d] * x[h * head_dim + d];
      ny += y[h * head_dim + d] * y[h * head_dim + d];
    }
    EXPECT_NEAR(nx, ny, 1e-5 * nx);
  }
}

TEST(Rope, OddHeadDimThrows) {
  std::vector<float> x(3);
  const int32_t pos = 1;
  EXPECT_THROW(cpu::rope(x.data(), &pos, 1, 1, 3, 1e4), moe::Error);
}

TEST(SiluMul, MatchesReferenceIncludingLargeMagnitudes) {
  std::mt19937 rng(7);
  const int64_t n = 1001;
  auto g = random_floats(rng, n, -30.0f, 30.0f);
  auto u = random_floats(rng, n, -2.0f, 2.0f);
  g[0] = -200.0f;  // exp(-g) overflows: silu -> (-)0
  g[1] = 200.0f;
  std::vector<float> got(n), want(n);
  cpu::silu_mul(g.data(), u.data(), n, got.data());
  ref::silu_mul(g.data(), u.data(), n, want.data());
  EXPECT_TRUE(all_close(got, want, kTolElementwise));
  EXPECT_NEAR(got[0], 0.0f, 1e-30f);
  EXPECT_FLOAT_EQ(got[1], 200.0f * u[1]);
  // In place over the gate buffer is allowed.
  cpu::silu_mul(g.data(), u.data(), n, g.data());
  EXPECT_EQ(g, got);
}

TEST(AddInplace, AddsElementwise) {
  std::mt19937 rng(8);
  const int64_t n = 77;
  auto x = random_floats(rng, n), y = random_floats(rng, n);
  auto want = x;
  ref::add_inplace(want.data(), y.data(), n);
  cpu::add_inplace(x.data(), y.data(), n);
  EXPECT_EQ(x, want);
}

TEST(GatherRows, CopiesIndexedRowsWithRepeats) {
  std::mt19937 rng(9);
  const int64_t width = 13, src_rows = 6;
  auto src = random_floats(rng, src_rows * width);
  std::vector<int32_t> idx = {5, 0, 0, 3, 5, 1};
  std::vector<float> got(idx.size() * width), want(idx.size() * width);
  cpu::gather_rows(src.data(), width, idx.data(), idx.size(), got.data());
  ref::gather_rows(src.data(), width, idx.data(), idx.size(), want.data());
  EXPECT_EQ(got, want);
}

// The naive fixed-order sum the combine bodies are tested against (tests/gpu_host).
TEST(WeightedRowSum, ReferenceGivesZerosForEmptyRowsAndTheRowItselfForOneUnweightedTerm) {
  std::mt19937 rng(11);
  const int64_t width = 37, src_rows = 9;
  auto src = random_floats(rng, src_rows * width);
  // Row 1 has no terms (zeros); row 3 is source row 7 alone.
  std::vector<int64_t> offsets = {0, 3, 3, 5, 6};
  std::vector<int32_t> idx = {4, 0, 8, 2, 2, 7};
  std::vector<float> got(4 * width, -1.0f);
  ref::weighted_row_sum(src.data(), width, idx.data(), nullptr, offsets.data(), 4, got.data());
  for (int64_t c = 0; c < width; ++c) {
    EXPECT_EQ(got[width + c], 0.0f);
    EXPECT_EQ(got[3 * width + c], src[7 * width + c]);
    EXPECT_EQ(got[2 * width + c], src[2 * width + c] + src[2 * width + c]);
  }
}

TEST(Argmax, ReturnsFirstOfEqualMaxima) {
  std::vector<float> x = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  EXPECT_EQ(kernels::argmax(x.data(), x.size()), 1);
  std::vector<float> neg = {-5.0f, -1.0f, -1.0f};
  EXPECT_EQ(kernels::argmax(neg.data(), neg.size()), 1);
  EXPECT_THROW(kernels::argmax(x.data(), 0), moe::Error);
}

TEST(UsableCores, FollowTheAffinityMaskNotTheMachine) {
  const int all = usable_cores();
  EXPECT_GE(all, 1);
  EXPECT_LE(all, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  int confined = 0;
  std::thread([&] {  // affinity is per thread: confine a fresh one to its first allowed CPU
    cpu_set_t set;
    ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
    int first = 0;
    while (!CPU_ISSET(first, &set)) ++first;
    CPU_ZERO(&set);
    CPU_SET(first, &set);
    ASSERT_EQ(sched_setaffinity(0, sizeof(set), &set), 0);
    confined = usable_cores();
    const std::vector<int32_t> mask = usable_cpu_mask();
    EXPECT_EQ(std::count(mask.begin(), mask.end(), 1), 1);
    EXPECT_EQ(mask[static_cast<size_t>(first)], 1);
  })
      .join();
  EXPECT_EQ(confined, 1);
  const std::vector<int32_t> mask = usable_cpu_mask();
  EXPECT_EQ(std::count(mask.begin(), mask.end(), 1), all);
}

TEST(Argmax, IsTheFirstLargestOnRandomVectors) {
  std::mt19937 rng(10);
  for (int t = 0; t < 20; ++t) {
    auto x = random_floats(rng, 1 + t * 97);
    const int64_t best = kernels::argmax(x.data(), x.size());
    for (int64_t i = 0; i < best; ++i) EXPECT_LT(x[i], x[best]) << "at " << i;
    for (size_t i = best; i < x.size(); ++i) EXPECT_LE(x[i], x[best]) << "at " << i;
  }
}

}  // namespace
}  // namespace moe::kernels::test
