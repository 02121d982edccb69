// Block-scaled e4m3 weight matrices on the CPU: fp8.h's quantise and dequantise bodies (128 x 128
// blocks, partial edge blocks), the CPU's row conversions (their AVX2 + F16C path) giving exactly
// the dequantise body's bits for every code and scale, the fused one-row dot, and linear() with
// e4m3 weights against the reference on the dequantised values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/common/fp8.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/weight_rows.h"

namespace moe::kernels {
namespace {

uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// An e4m3 matrix [rows, cols] with every code (NaN included) and scales of many magnitudes.
struct E4m3Matrix {
  int64_t rows, cols;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  E4m3Matrix(int64_t r, int64_t c, uint32_t seed, bool with_nan) : rows(r), cols(c) {
    std::mt19937 rng(seed);
    codes.resize(static_cast<size_t>(r * c));
    for (size_t i = 0; i < codes.size(); ++i) {
      codes[i] = static_cast<uint8_t>(i < 256 ? i : rng() & 0xFF);
      if (!with_nan && (codes[i] & 0x7F) == 0x7F) codes[i] ^= 1;
    }
    std::uniform_real_distribution<float> exponent(-30.0f, 30.0f);
    for (int64_t i = 0; i < fp8_num_scales(r, c); ++i) {
      scales.push_back(std::exp2(exponent(rng)) * (i % 3 == 0 ? -1.0f : 1.0f));
    }
    if (scales.size() > 1) scales[1] = 3e37f;  // past the vector path's range: scalar body
  }
  WeightView view() const { return {codes.data(), scales.data()}; }
};

TEST(Fp8Weights, ScaleGridIsCeilOfBothDimensionsOver128) {
  EXPECT_EQ(fp8_num_blocks(1), 1);
  EXPECT_EQ(fp8_num_blocks(128), 1);
  EXPECT_EQ(fp8_num_blocks(129), 2);
  EXPECT_EQ(fp8_num_scales(768, 2048), 6 * 16);
  EXPECT_EQ(fp8_num_scales(130, 200), 4);
}

TEST(Fp8Weights, RowConversionsGiveTheDequantiseBodysBitsForEveryCode) {
  const E4m3Matrix m(131, 300, 1, true);  // partial blocks in both dimensions
  std::vector<float> f32(static_cast<size_t>(m.rows * m.cols));
  std::vector<bf16> b16(f32.size());
  cpu::weight_rows_to_f32(m.view(), m.cols, 0, m.rows, f32.data());
  cpu::weight_rows_to_bf16(m.view(), m.cols, 0, m.rows, b16.data());
  for (int64_t r = 0; r < m.rows; ++r) {
    for (int64_t c = 0; c < m.cols; ++c) {
      const float want = e4m3_matrix_value(m.codes.data(), m.scales.data(), m.cols, r, c);
      const size_t i = static_cast<size_t>(r * m.cols + c);
      ASSERT_EQ(f32_bits(f32[i]), f32_bits(want)) << r << "," << c << " code " << int(m.codes[i]);
      ASSERT_EQ(b16[i].bits, float_to_bf16(want).bits) << r << "," << c;
    }
  }
  // Rows from the middle of a block use that block's scales.
  std::vector<float> one(static_cast<size_t>(m.cols));
  cpu::weight_rows_to_f32(m.view(), m.cols, 129, 1, one.data());
  EXPECT_EQ(f32_bits(one[299]),
            f32_bits(e4m3_dequantise(m.codes[129 * 300 + 299], m.scales[1 * 3 + 2])));
}

TEST(Fp8Weights, QuantisedBlockHoldsTheNearestCodesOfValueOverAmaxOver448) {
  const int64_t rows = 130, cols = 140;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (float& v : w) v = nd(rng);
  for (int64_t r = 128; r < rows; ++r) {  // block (1, 1) all zero: scale 1
    std::fill(w.begin() + r * cols + 128, w.begin() + (r + 1) * cols, 0.0f);
  }
  std::vector<uint8_t> codes(w.size());
  std::vector<float> scales(static_cast<size_t>(fp8_num_scales(rows, cols)));
  for (int64_t br = 0; br < 2; ++br) {
    for (int64_t bc = 0; bc < 2; ++bc)
      e4m3_quantise_block(w.data(), rows, cols, br, bc, codes.data(), scales.data());
  }
  EXPECT_EQ(scales[3], 1.0f);
  for (int64_t br = 0; br < 2; ++br) {
    for (int64_t bc = 0; bc < 2; ++bc) {
      float amax = 0;
      for (int64_t r = br * 128; r < std::min<int64_t>(rows, br * 128 + 128); ++r) {
        for (int64_t c = bc * 128; c < std::min<int64_t>(cols, bc * 128 + 128); ++c) {
          amax = std::max(amax, std::fabs(w[r * cols + c]));
        }
      }
      if (amax > 0) EXPECT_EQ(scales[br * 2 + bc], amax / kE4m3Max);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float s = scales[(r / 128) * 2 + c / 128];
      ASSERT_EQ(codes[r * cols + c], float_to_e4m3(w[r * cols + c] / s)) << r << "," << c;
      // Dequantised within half an e4m3 step (3 mantissa bits) of the value, or below the
      // smallest subnormal step.
      const float back = e4m3_matrix_value(codes.data(), scales.data(), cols, r, c);
      EXPECT_LE(std::fabs(back - w[r * cols + c]),
                std::max(std::fabs(w[r * cols + c]) / 16.0f, s * std::exp2(-10.0f)));
    }
  }
}

TEST(Fp8Weights, OneRowDotMatchesTheDequantisedDotAndNanPropagates) {
  const E4m3Matrix m(3, 1000, 5, false);
  std::vector<float> x(static_cast<size_t>(m.cols));
  std::mt19937 rng(6);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& v : x) v = nd(rng);
  // Scales of one magnitude per row so the sum is well conditioned.
  E4m3Matrix w = m;
  for (float& s : w.scales) s = 1e-3f;
  for (int64_t r = 0; r < w.rows; ++r) {
    double want = 0, mag = 0;
    for (int64_t c = 0; c < w.cols; ++c) {
      const double p = static_cast<double>(x[c]) *
                       e4m3_matrix_value(w.codes.data(), w.scales.data(), w.cols, r, c);
      want += p;
      mag += std::fabs(p);
    }
    for (cpu::DotPath path :
         {cpu::DotPath::kBest, cpu::DotPath::kAvx512, cpu::DotPath::kAvx2, cpu::DotPath::kScalar}) {
      if (!cpu::has_dot_path(path)) continue;
      EXPECT_NEAR(cpu::dot_e4m3_row(x.data(), w.view(), w.cols, r, path), want, 1e-6 * mag)
          << "row " << r << " path " << static_cast<int>(path);
    }
  }
  w.codes[1 * w.cols + 517] = 0x7F;  // NaN
  for (cpu::DotPath path :
       {cpu::DotPath::kBest, cpu::DotPath::kAvx512, cpu::DotPath::kAvx2, cpu::DotPath::kScalar}) {
    if (!cpu::has_dot_path(path)) continue;
    EXPECT_TRUE(std::isnan(cpu::dot_e4m3_row(x.data(), w.view(), w.cols, 1, path)));
    EXPECT_FALSE(std::isnan(cpu::dot_e4m3_row(x.data(), w.view(), w.cols, 0, path)));
  }
}

TEST(Fp8Weights, LinearWithE4m3WeightsMatchesTheReferenceOnDequantisedValues) {
  const int64_t in = 264, out = 150;  // blocks partial in both dimensions
  E4m3Matrix w(out, in, 7, false);
  for (size_t i = 0; i < w.scales.size(); ++i) w.scales[i] = 1e-2f * static_cast<float>(1 + i % 4);
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t rows : {1, 3, 40}) {
    std::vector<float> x(static_cast<size_t>(rows * in)), y(static_cast<size_t>(rows * out)),
        want(y.size());
    for (float& v : x) v = nd(rng);
    cpu::linear(x.data(), w.view(), rows, in, out, y.data());
    cpu::reference::linear(x.data(), w.view(), rows, in, out, want.data());
    for (size_t i = 0; i < y.size(); ++i) {
      ASSERT_NEAR(y[i], want[i], 1e-4 * (1.0 + std::fabs(want[i]))) << rows << " rows, " << i;
    }
  }
}

}  // namespace
}  // namespace moe::kernels
