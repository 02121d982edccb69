// The reference checker of the all-to-all benchmark (bench/a2a_check.h): seeded data is
// deterministic, routing picks distinct experts, the expected combine output is exact in fp32
// whatever order the terms are summed in (so #wrong == 0 exactly for a correct exchange on any
// rank count), and a single corrupted element or a misrouted token is counted.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "bench/a2a_check.h"

namespace moe::bench {
namespace {

TEST(A2aCheck, DataAndRoutingAreDeterministicAndDistinct) {
  EXPECT_EQ(a2a_hidden_value(7, 1, 5, 9), a2a_hidden_value(7, 1, 5, 9));
  EXPECT_NE(a2a_routing(7, 0, 64, 128, 8).ids, a2a_routing(7, 1, 64, 128, 8).ids);
  const A2aRouting r = a2a_routing(7, 3, 200, 16, 8);
  for (int64_t t = 0; t < 200; ++t) {
    std::set<int32_t> ids(r.ids.begin() + t * 8, r.ids.begin() + (t + 1) * 8);
    EXPECT_EQ(ids.size(), 8u) << "token " << t;
    for (int32_t e : ids) EXPECT_TRUE(e >= 0 && e < 16);
  }
  for (float w : r.weights) EXPECT_TRUE(w == 0.125f || w == 0.25f || w == 0.375f || w == 0.5f);
}

// The combine as the dispatcher forms it for some rank split: partial sums per destination, then
// their sum, in any order; the result must equal h * sum_j w_j * scale_j bit for bit.
TEST(A2aCheck, ReferenceIsExactInAnySummationOrder) {
  const int64_t T = 50, H = 33;
  const int k = 8;
  const A2aRouting r = a2a_routing(11, 2, T, 128, k);
  std::vector<float> y(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < H; ++c) {
      const float h = a2a_hidden_value(11, 2, t, c);
      float a = 0, b = 0;  // two "destination ranks": odd and even entries, summed backwards
      for (int j = k - 1; j >= 0; --j) {
        const size_t i = static_cast<size_t>(t * k + j);
        const float term = r.weights[i] * (a2a_expert_scale(r.ids[i]) * h);
        (j % 2 ? a : b) += term;
      }
      y[static_cast<size_t>(t * H + c)] = b + a;
    }
  }
  EXPECT_EQ(a2a_count_wrong(y.data(), 11, 2, r, T, H), 0);
  y[17] += 0.125f;
  EXPECT_EQ(a2a_count_wrong(y.data(), 11, 2, r, T, H), 1);
  // Another rank's token in place of this one's: a whole row wrong (up to coincidences).
  for (int64_t c = 0; c < H; ++c) y[static_cast<size_t>(3 * H + c)] *= -1.0f;
  EXPECT_GE(a2a_count_wrong(y.data(), 11, 2, r, T, H), H / 2);
}

TEST(A2aCheck, RawPatternDependsOnSourceDestinationAndIndex) {
  int same = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    same += a2a_raw_byte(1, 0, 1, i) == a2a_raw_byte(1, 1, 0, i) ? 1 : 0;
  }
  EXPECT_LT(same, 20);  // ~1/256 by chance
  EXPECT_EQ(a2a_raw_byte(1, 2, 3, 4), a2a_raw_byte(1, 2, 3, 4));
}

}  // namespace
}  // namespace moe::bench
