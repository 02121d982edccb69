// Router top-k against the reference: fp32 softmax over all experts, descending order with ties
// to the lower expert id, optional renormalisation (weights then sum to 1), k == experts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/common/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"

namespace moe::kernels::test {
namespace {

namespace cpu = moe::kernels::cpu;
namespace ref = moe::kernels::cpu::reference;

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed route(const std::vector<float>& logits, int64_t rows, int64_t experts, int64_t k,
             bool renorm, bool use_reference = false) {
  Routed r{std::vector<int32_t>(rows * k, -1), std::vector<float>(rows * k, NAN)};
  (use_reference ? ref::router_topk : cpu::router_topk)(logits.data(), rows, experts, k, renorm,
                                                        r.ids.data(), r.weights.data());
  return r;
}

TEST(Router, MatchesReferenceOnRandomLogits) {
  std::mt19937 rng(40);
  for (bool renorm : {false, true}) {
    for (auto [experts, k] : {std::pair<int64_t, int64_t>{128, 8}, {60, 4}, {7, 1}, {16, 16}}) {
      const int64_t rows = 33;
      auto logits = random_floats(rng, rows * experts, -4.0f, 4.0f);
      Routed got = route(logits, rows, experts, k, renorm);
      Routed want = route(logits, rows, experts, k, renorm, true);
      EXPECT_EQ(got.ids, want.ids) << "experts " << experts << " k " << k;
      EXPECT_TRUE(all_close(got.weights, want.weights, kTolElementwise));
    }
  }
}

TEST(Router, TiesGoToTheLowerExpertId) {
  // Row 0: all equal -> 0, 1, 2. Row 1: three-way tie for first at experts 1, 2, 4.
  const std::vector<float> logits = {0, 0, 0, 0, 0, 1, 3, 3, 0, 3};
  Routed r = route(logits, 2, 5, 3, false);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 2, 1, 2, 4}));
  for (int t = 0; t < 3; ++t) EXPECT_FLOAT_EQ(r.weights[t], 0.2f);
  EXPECT_EQ(r.weights[3], r.weights[4]);
  EXPECT_EQ(r.weights[4], r.weights[5]);
  Routed want = route(logits, 2, 5, 3, false, true);
  EXPECT_EQ(r.ids, want.ids);
}

TEST(Router, RenormalisedWeightsSumToOneAndKeepRatios) {
  std::mt19937 rng(41);
  const int64_t rows = 20, experts = 64, k = 6;
  auto logits = random_floats(rng, rows * experts, -3.0f, 3.0f);
  Routed plain = route(logits, rows, experts, k, false);
  Routed norm = route(logits, rows, experts, k, true);
  EXPECT_EQ(plain.ids, norm.ids);
  for (int64_t r = 0; r < rows; ++r) {
    double sum_plain = 0, sum_norm = 0;
    for (int64_t t = 0; t < k; ++t) {
      sum_plain += plain.weights[r * k + t];
      sum_norm += norm.weights[r * k + t];
      if (t > 0) {
        EXPECT_GE(norm.weights[r * k + t - 1], norm.weights[r * k + t]);
      }
    }
    EXPECT_NEAR(sum_norm, 1.0, 1e-6);
    EXPECT_LT(sum_plain, 1.0);  // only k of 64 experts' probability mass
    for (int64_t t = 0; t < k; ++t) {
      EXPECT_NEAR(norm.weights[r * k + t], plain.weights[r * k + t] / sum_plain, 1e-6);
    }
  }
}

TEST(Router, UnnormalisedWeightsAreSoftmaxProbabilities) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  Routed r = route(logits, 1, 3, 2, false);
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 1}));
  EXPECT_NEAR(r.weights[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(r.weights[1], std::exp(2.0) / z, 1e-6);
}

TEST(Router, TopKEqualToExpertCountReturnsEveryExpertSorted) {
  std::mt19937 rng(42);
  const int64_t experts = 12, rows = 4;
  auto logits = random_floats(rng, rows * experts, -2.0f, 2.0f);
  for (bool renorm : {false, true}) {
    Routed r = route(logits, rows, experts, experts, renorm);
    for (int64_t row = 0; row < rows; ++row) {
      std::vector<int32_t> ids(r.ids.begin() + row * experts, r.ids.begin() + (row + 1) * experts);
      std::vector<int32_t> sorted = ids;
      std::sort(sorted.begin(), sorted.end());
      std::vector<int32_t> all(experts);
      std::iota(all.begin(), all.end(), 0);
      EXPECT_EQ(sorted, all);
      double sum = 0;
      for (int64_t t = 0; t < experts; ++t) {
        sum += r.weights[row * experts + t];
        if (t > 0) {
          EXPECT_GE(r.weights[row * experts + t - 1], r.weights[row * experts + t]);
          EXPECT_GE(logits[row * experts + ids[t - 1]], logits[row * experts + ids[t]]);
        }
      }
      EXPECT_NEAR(sum, 1.0, 1e-6);
    }
  }
}

TEST(Router, RejectsKOutsideOneToExperts) {
  std::vector<float> logits(4);
  std::vector<int32_t> ids(8);
  std::vector<float> w(8);
  EXPECT_THROW(cpu::router_topk(logits.data(), 1, 4, 5, true, ids.data(), w.data()), moe::Error);
  EXPECT_THROW(cpu::router_topk(logits.data(), 1, 4, 0, true, ids.data(), w.data()), moe::Error);
}

TEST(Router, RejectsNonFiniteLogits) {
  std::vector<float> logits = {0.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f};
  std::vector<int32_t> ids(1);
  std::vector<float> w(1);
  EXPECT_THROW(cpu::router_topk(logits.data(), 1, 3, 1, true, ids.data(), w.data()), moe::Error);
}

}  // namespace
}  // namespace moe::kernels::test
