// sample_token: greedy is argmax; top-k / top-p keep what they say; draws are a pure function
// of (seed, sequence, step).
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "runtime/model/sampling.h"
#include "tests/common/expect_error.h"

namespace moe::runtime {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};

TEST(Sampling, GreedyIsTheFirstLargest) {
  SamplingParams greedy;
  EXPECT_EQ(sample_token(kLogits, greedy, 0.99), 1);
}

TEST(Sampling, TopKOneIsGreedyAndTopKLimitsTheChoices) {
  SamplingParams p;
  p.temperature = 1;
  p.top_k = 1;
  for (double u : {0.0, 0.5, 0.999}) EXPECT_EQ(sample_token(kLogits, p, u), 1);
  p.top_k = 2;  // ids 1 and 3 (tied; id order)
  std::set<int32_t> seen;
  for (int i = 0; i < 100; ++i) seen.insert(sample_token(kLogits, p, i / 100.0));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 3}));
}

TEST(Sampling, TopPKeepsTheSmallestSetReachingP) {
  SamplingParams p;
  p.temperature = 1;
  // probabilities: id1 = id3 ~ 0.397, id2 ~ 0.146, id0 ~ 0.054, id4 ~ 0.007
  p.top_p = 0.5;  // id1 alone is 0.397 < 0.5: ids 1 and 3
  std::set<int32_t> seen;
  for (int i = 0; i < 100; ++i) seen.insert(sample_token(kLogits, p, i / 100.0));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 3}));
  p.top_p = 0.95;  // with id 2: 0.939 < 0.95, with id 0: 0.993; id 4 never
  seen.clear();
  for (int i = 0; i < 1000; ++i) seen.insert(sample_token(kLogits, p, i / 1000.0));
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(Sampling, DrawsDependOnSeedSequenceAndStepOnly) {
  EXPECT_EQ(sampling_uniform(7, 3, 11), sampling_uniform(7, 3, 11));
  EXPECT_NE(sampling_uniform(7, 3, 11), sampling_uniform(8, 3, 11));
  EXPECT_NE(sampling_uniform(7, 3, 11), sampling_uniform(7, 4, 11));
  EXPECT_NE(sampling_uniform(7, 3, 11), sampling_uniform(7, 3, 12));
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    const double u = sampling_uniform(1, i, 0);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
}

TEST(Sampling, BadParametersAreErrors) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_NE(test::expect_error("input", [&] { p.validate(); }).find("--top-p must be in (0, 1]"),
            std::string::npos);
  p = {};
  p.temperature = -1;
  EXPECT_NE(test::expect_error("input", [&] { p.validate(); }).find("--temperature must be >= 0"),
            std::string::npos);
}

}  // namespace
}  // namespace moe::runtime
