// bf16 and fp16 conversions: kernels/common/bf16.h scalar helpers, the bulk fast ops and the
// independent reference rounding agree; round-to-nearest-even, NaN/inf/subnormal cases.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/bf16_rows.h"
#include "kernels/common/bf16.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"

namespace moe::kernels::test {
namespace {

namespace cpu = moe::kernels::cpu;
namespace ref = moe::kernels::cpu::reference;

TEST(Bf16, EveryBitPatternRoundTripsThroughFloat) {
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const bf16 v{static_cast<uint16_t>(b)};
    const float f = bf16_to_float(v);
    EXPECT_EQ(std::bit_cast<uint32_t>(f), b << 16) << "bits " << b;
    const bf16 back = float_to_bf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_float(back))) << "NaN lost its NaN-ness, bits " << b;
      EXPECT_EQ(back.bits & 0x8000u, b & 0x8000u) << "NaN sign, bits " << b;
    } else {
      EXPECT_EQ(back.bits, b) << "bits " << b;
    }
  }
}

TEST(Bf16, RoundsHalfwayCasesToEvenMantissa) {
  // 1 + 2^-8 lies exactly between 1 (even) and 1 + 2^-7 (odd): goes down to 1.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80u);
  // 1 + 3*2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up.
  EXPECT_EQ(float_to_bf16(1.0f + 3.0f * std::ldexp(1.0f, -8)).bits, 0x3f82u);
  // Just above the halfway point rounds up, just below rounds down.
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3f808001u)).bits, 0x3f81u);
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3f807fffu)).bits, 0x3f80u);
  // Negative values mirror positive ones.
  EXPECT_EQ(float_to_bf16(-(1.0f + std::ldexp(1.0f, -8))).bits, 0xbf80u);
  EXPECT_EQ(float_to_bf16(-(1.0f + 3.0f * std::ldexp(1.0f, -8))).bits, 0xbf82u);
  // A carry out of the mantissa bumps the exponent: 0x3fffffff -> 2.0.
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x3fffffffu)).bits, 0x4000u);
  // Largest float rounds to +inf (beyond the largest bf16 + half ulp).
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()).bits, 0x7f80u);
  // Largest bf16 stays; smallest subnormal halfway case rounds to even (zero).
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x7f7f0000u)).bits, 0x7f7fu);
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x00008000u)).bits, 0x0000u);
  EXPECT_EQ(float_to_bf16(std::bit_cast<float>(0x00018000u)).bits, 0x0002u);
  EXPECT_EQ(round_to_bf16(3.14159265f), 3.140625f);
}

TEST(Bf16, InfinitiesAndNansSurvive) {
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()).bits, 0x7f80u);
  EXPECT_EQ(float_to_bf16(-std::numeric_limits<float>::infinity()).bits, 0xff80u);
  // A signalling NaN whose payload sits only in the low 16 bits must not become inf.
  const bf16 n = float_to_bf16(std::bit_cast<float>(0x7f800001u));
  EXPECT_TRUE(std::isnan(bf16_to_float(n)));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_EQ(float_to_bf16(-0.0f).bits, 0x8000u);
}

TEST(Bf16, ScalarRoundingMatchesIndependentReferenceOnRandomBits) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  const int64_t n = 1 << 20;
  std::vector<float> src(n);
  for (float& f : src) f = std::bit_cast<float>(bits(rng));
  std::vector<bf16> want(n);
  ref::f32_to_bf16(src.data(), n, want.data());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(float_to_bf16(src[i]).bits, want[i].bits)
        << "input bits " << std::bit_cast<uint32_t>(src[i]);
  }
}

TEST(Bf16, BulkConversionsMatchScalarHelpers) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  for (int64_t n : {0, 1, 7, 33, 1000, 4099}) {
    std::vector<float> src(n);
    for (float& f : src) f = std::bit_cast<float>(bits(rng));
    std::vector<bf16> fast(n), slow(n);
    cpu::f32_to_bf16(src.data(), n, fast.data());
    ref::f32_to_bf16(src.data(), n, slow.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(fast[i].bits, slow[i].bits) << "n " << n << " i " << i;
      ASSERT_EQ(fast[i].bits, float_to_bf16(src[i]).bits);
    }
    std::vector<float> back_fast(n), back_ref(n);
    cpu::bf16_to_f32(fast.data(), n, back_fast.data());
    ref::bf16_to_f32(fast.data(), n, back_ref.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(back_fast[i]), std::bit_cast<uint32_t>(back_ref[i]));
      ASSERT_EQ(std::bit_cast<uint32_t>(back_fast[i]), static_cast<uint32_t>(fast[i].bits) << 16);
    }
  }
}

// bf16_rows.h: on CPUs with AVX512-BF16 its narrowing runs on the convert instruction, which
// zeroes subnormal inputs, so every special value is placed in every lane of a group of 16 (and in
// the tail) among ordinary neighbours: each element must keep float_to_bf16's bits.
TEST(Bf16Rows, EveryLaneKeepsTheScalarBitsForSpecialValues) {
  const uint32_t specials[] = {0x00000001u, 0x007fffffu, 0x80000001u, 0x00018000u, 0x7f800001u,
                               0xffc00000u, 0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u,
                               0x7f7fffffu, 0x3f808000u, 0x3f818000u, 0x3f807fffu};
  const int64_t n = 37;  // two groups of 16 and a tail of 5
  for (uint32_t special : specials) {
    for (int64_t at = 0; at < n; ++at) {
      std::vector<float> src(n);
      for (int64_t i = 0; i < n; ++i) src[i] = 1.5f + 0.37f * static_cast<float>(i);
      src[at] = std::bit_cast<float>(special);
      std::vector<uint16_t> narrow(n);
      std::vector<float> rounded(n), in_place = src;
      narrow_bf16(src.data(), n, narrow.data());
      round_bf16(src.data(), n, rounded.data());
      round_bf16(in_place.data(), n, in_place.data());
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t want = float_to_bf16(src[i]).bits;
        ASSERT_EQ(narrow[i], want) << "special " << special << " at " << at << ", element " << i;
        ASSERT_EQ(std::bit_cast<uint32_t>(rounded[i]), static_cast<uint32_t>(want) << 16);
        ASSERT_EQ(std::bit_cast<uint32_t>(in_place[i]), static_cast<uint32_t>(want) << 16);
      }
    }
  }
}

TEST(Bf16Rows, WidenAddsInOrder) {
  const std::vector<uint16_t> rows = {0x3f80u, 0xc000u, 0x7f80u, 0x0001u, 0x8000u};
  std::vector<float> acc = {0.5f, 0.5f, 1.0f, 0.0f, -0.0f};
  widen_bf16(rows.data(), 5, true, acc.data());
  EXPECT_EQ(acc, (std::vector<float>{1.5f, -1.5f, std::numeric_limits<float>::infinity(),
                                     bf16_to_float(bf16{0x0001u}), -0.0f}));
  EXPECT_TRUE(std::signbit(acc[4]));
  widen_bf16(rows.data(), 5, false, acc.data());
  for (size_t i = 0; i < rows.size(); ++i)
    EXPECT_EQ(std::bit_cast<uint32_t>(acc[i]), static_cast<uint32_t>(rows[i]) << 16);
}

// weighted_sum_bf16 against the plain scalar loop, for 0 to 3 terms and every destination, over
// 37 columns (two groups of 16 in the AVX512-BF16 path, the tail in the portable one). Each
// product must be rounded before its add (an FMA rounds once): with e0 = 1, w0 = -(1 + 2^-7 +
// 2^-23), e1 = 1 + 2^-7 and w1 = 1 + 2^-23 a multiply and an add give 0, an FMA 2^-30; that column
// walks every lane. Tiny values make some sums subnormal (the narrowing's other path).
TEST(Bf16Rows, WeightedSumsRoundEachProductAndGoWhereAsked) {
  const int64_t n = 37;
  std::mt19937 rng(3);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<std::vector<uint16_t>> rows(3, std::vector<uint16_t>(n));
  for (auto& row : rows) {
    for (int64_t i = 0; i < n; ++i)
      row[i] = float_to_bf16((i % 9 == 4 ? 1e-38f : 1.0f) * n01(rng)).bits;
  }
  const float w1 = std::bit_cast<float>(0x3f800001u);
  const volatile float trap = w1 * bf16_to_float(bf16{0x3f81u});  // rounded: 1 + 2^-7 + 2^-23
  const float weights[3] = {-trap, w1, 0.75f};
  std::vector<float> acc(n), base(n);
  for (int64_t i = 0; i < n; ++i) {
    acc[i] = n01(rng);
    base[i] = n01(rng);
  }
  for (int64_t at = 0; at < n; ++at) {
    rows[0][at] = 0x3f80u;  // 1
    rows[1][at] = 0x3f81u;  // 1 + 2^-7
    const uint16_t* ptrs[3] = {rows[0].data(), rows[1].data(), rows[2].data()};
    for (int32_t count = 0; count <= 3; ++count) {
      std::vector<float> want_sum(n);
      for (int64_t i = 0; i < n; ++i) {
        float sum = 0.0f;
        for (int32_t j = 0; j < count; ++j) {
          const volatile float term = weights[j] * bf16_to_float(bf16{ptrs[j][i]});
          sum = j == 0 ? term : sum + term;
        }
        want_sum[i] = sum;
      }
      if (count == 2) ASSERT_EQ(want_sum[at], 0.0f);
      const WeightedRows terms{ptrs, weights, count};
      for (SumTo to : {SumTo::kStore, SumTo::kAdd, SumTo::kAddSum, SumTo::kNarrow}) {
        std::vector<float> out = base;
        std::vector<uint16_t> bits(n);
        weighted_sum_bf16(terms, n, to, out.data(), acc.data(), bits.data());
        for (int64_t i = 0; i < n; ++i) {
          const float s = want_sum[i];
          SCOPED_TRACE(testing::Message() << count << " terms, mode " << static_cast<int>(to)
                                          << ", trap at " << at << ", column " << i);
          if (to == SumTo::kNarrow) {
            ASSERT_EQ(bits[i], float_to_bf16(s).bits);
            continue;
          }
          const volatile float inner = acc[i] + s;
          const float want = to == SumTo::kStore ? s
                             : to == SumTo::kAdd ? base[i] + s
                                                 : base[i] + inner;
          ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(want));
        }
      }
    }
    rows[0][at] = float_to_bf16(n01(rng)).bits;
    rows[1][at] = float_to_bf16(n01(rng)).bits;
  }
}

TEST(HalfToFloat, KnownValues) {
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);                         // largest normal
  EXPECT_EQ(half_to_float(0x0400), std::ldexp(1.0f, -14));            // smallest normal
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));            // smallest subnormal
  EXPECT_EQ(half_to_float(0x03ff), 1023.0f * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(half_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
  EXPECT_TRUE(std::isnan(half_to_float(0x7c01)));
  EXPECT_EQ(std::bit_cast<uint32_t>(half_to_float(0x0000)), 0x00000000u);
  EXPECT_EQ(std::bit_cast<uint32_t>(half_to_float(0x8000)), 0x80000000u);  // -0 keeps its sign
}

TEST(HalfToFloat, EveryBitPatternMatchesTheDefiningFormula) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const int sign = (h & 0x8000u) ? -1 : 1;
    const int exp = (h >> 10) & 0x1f;
    const int mant = h & 0x3ff;
    const float got = half_to_float(static_cast<uint16_t>(h));
    if (exp == 31) {
      if (mant == 0) {
        EXPECT_EQ(got, sign * std::numeric_limits<float>::infinity()) << h;
      } else {
        EXPECT_TRUE(std::isnan(got)) << h;
      }
      continue;
    }
    // subnormal: mant * 2^-24; normal: (1024 + mant) * 2^(exp - 25)
    const double want = exp == 0 ? sign * std::ldexp(static_cast<double>(mant), -24)
                                 : sign * std::ldexp(1024.0 + mant, exp - 25);
    EXPECT_EQ(static_cast<double>(got), want) << "half bits " << h;
    EXPECT_EQ(std::signbit(got), sign < 0) << h;
  }
}

}  // namespace
}  // namespace moe::kernels::test
