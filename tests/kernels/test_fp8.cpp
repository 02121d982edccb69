// FP8 E4M3 conversions (kernels/common/fp8.h) against a brute-force nearest-code search over the
// whole code table, and the format's fixed points: every finite code round-trips, ties go to the
// even code, values past 448 saturate, NaN stays NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "kernels/common/fp8.h"

namespace moe::kernels {
namespace {

bool is_nan_code(int c) {
  return (c & 0x7F) == 0x7F;
}

// The nearest finite code by exhaustive search; a tie goes to the code with an even mantissa.
uint8_t nearest_code(float x) {
  if (std::fabs(x) >= kE4m3Max) return x < 0 ? 0xFE : 0x7E;
  int best = -1;
  double best_err = 0;
  for (int c = 0; c < 256; ++c) {
    if (is_nan_code(c)) continue;
    const double err = std::fabs(static_cast<double>(e4m3_to_float(static_cast<uint8_t>(c))) - x);
    const bool better =
        best < 0 || err < best_err || (err == best_err && (c & 1) == 0 && (best & 1) != 0);
    // Of +0 and -0 keep the one with x's sign.
    const bool zero_sign = err == best_err && e4m3_to_float(static_cast<uint8_t>(c)) == 0.0f &&
                           std::signbit(x) == ((c & 0x80) != 0);
    if (better || zero_sign) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best);
}

TEST(Fp8, EveryFiniteCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const float v = e4m3_to_float(static_cast<uint8_t>(c));
    if (is_nan_code(c)) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    EXPECT_EQ(float_to_e4m3(v), c) << "code " << c << " value " << v;
  }
}

TEST(Fp8, KnownValues) {
  EXPECT_EQ(float_to_e4m3(1.0f), 0x38);
  EXPECT_EQ(float_to_e4m3(-2.0f), 0xC0);
  EXPECT_EQ(float_to_e4m3(448.0f), 0x7E);
  EXPECT_EQ(float_to_e4m3(0x1p-9f), 0x01);  // smallest subnormal
  EXPECT_EQ(float_to_e4m3(0x1p-6f), 0x08);  // smallest normal
  EXPECT_EQ(e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), 0x1p-9f);
  EXPECT_EQ(e4m3_to_float(0x0F), 0x1.ep-6f);  // 1.875 * 2^-6
}

TEST(Fp8, TiesGoToTheEvenCode) {
  EXPECT_EQ(float_to_e4m3(1.0625f), 0x38);        // between 1 (m 0) and 1.125 (m 1)
  EXPECT_EQ(float_to_e4m3(1.1875f), 0x3A);        // between 1.125 (m 1) and 1.25 (m 2)
  EXPECT_EQ(float_to_e4m3(0x1p-10f), 0x00);       // half the smallest subnormal
  EXPECT_EQ(float_to_e4m3(3 * 0x1p-10f), 0x02);   // between 1 and 2 x 2^-9
  EXPECT_EQ(float_to_e4m3(15 * 0x1p-10f), 0x08);  // between 7 x 2^-9 and 2^-6
}

TEST(Fp8, SaturatesAndKeepsNan) {
  EXPECT_EQ(float_to_e4m3(464.0f), 0x7E);  // would round to 480, which e4m3 does not have
  EXPECT_EQ(float_to_e4m3(1e30f), 0x7E);
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(float_to_e4m3(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(float_to_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(float_to_e4m3(-std::numeric_limits<float>::quiet_NaN()), 0xFF);
}

TEST(Fp8, RandomValuesRoundToTheNearestCode) {
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> log2(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    const float x = (rng() % 2 ? -1.0f : 1.0f) * std::exp2(log2(rng));
    ASSERT_EQ(float_to_e4m3(x), nearest_code(x)) << x;
  }
}

TEST(Fp8, BlockScaleMapsTheLargestMagnitudeTo448) {
  EXPECT_EQ(e4m3_block_scale(0.0f), 1.0f);
  for (float amax : {1e-6f, 0.37f, 3.0f, 1000.0f}) {
    const float s = e4m3_block_scale(amax);
    EXPECT_EQ(float_to_e4m3(amax / s), 0x7E) << amax;
  }
}

}  // namespace
}  // namespace moe::kernels
