// The scalar math shared by the CUDA kernels, run on the CPU: bf16 conversion matches
// common/bf16.h bit for bit, and merging online-softmax splits equals one softmax over all keys.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/cuda/device_math.h"

namespace moe::kernels::cuda {
namespace {

TEST(DeviceMath, Bf16RoundingMatchesHostConversionBitForBit) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = bits(rng);
    const float f = bits_to_f32(u);
    ASSERT_EQ(f32_to_bf16_bits(f), float_to_bf16(f).bits) << "bits 0x" << std::hex << u;
  }
  for (float f : {0.0f, -0.0f, 1.0f, -1.5f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::denorm_min(), 1.00390625f /* tie */}) {
    EXPECT_EQ(f32_to_bf16_bits(f), float_to_bf16(f).bits) << f;
  }
  EXPECT_TRUE(std::isnan(bf16_bits_to_f32(f32_to_bf16_bits(std::nanf("")))));
  EXPECT_EQ(bf16_bits_to_f32(0x3f80), 1.0f);
}

TEST(DeviceMath, SiluMatchesDefinition) {
  for (float g : {-20.0f, -1.0f, 0.0f, 0.5f, 3.0f, 40.0f}) {
    EXPECT_NEAR(silu(g), g / (1.0f + std::exp(-g)), 1e-6f * (1.0f + std::fabs(g)));
  }
}

TEST(DeviceMath, MergedSoftmaxSplitsEqualOneSoftmax) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-8.0f, 8.0f);
  const int n = 100;
  std::vector<float> s(n), v(n);
  for (int i = 0; i < n; ++i) {
    s[i] = dist(rng);
    v[i] = dist(rng);
  }
  double m = -1e30, l = 0, o = 0;
  for (int i = 0; i < n; ++i) m = std::max<double>(m, s[i]);
  for (int i = 0; i < n; ++i) {
    l += std::exp(s[i] - m);
    o += std::exp(s[i] - m) * v[i];
  }
  const double want = o / l;

  // Three splits, one of them empty (all keys masked), streamed in uneven tiles.
  const int bounds[] = {0, 37, 37, 100};
  std::vector<SoftmaxPartial> parts;
  std::vector<float> outs;
  for (int sp = 0; sp < 3; ++sp) {
    SoftmaxPartial p;
    float acc = 0.0f;
    for (int i = bounds[sp]; i < bounds[sp + 1]; i += 7) {
      float tile_max = -INFINITY;
      for (int j = i; j < std::min(i + 7, bounds[sp + 1]); ++j) tile_max = std::max(tile_max, s[j]);
      const float m_new = std::max(p.m, tile_max);
      const float corr = softmax_rescale(p.m, m_new);
      float sum = 0.0f;
      acc *= corr;
      for (int j = i; j < std::min(i + 7, bounds[sp + 1]); ++j) {
        const float w = softmax_weight(s[j], m_new);
        sum += w;
        acc += w * v[j];
      }
      p.l = p.l * corr + sum;
      p.m = m_new;
    }
    parts.push_back(p);
    outs.push_back(acc);
  }
  EXPECT_EQ(parts[1].l, 0.0f);
  float m_merged = -INFINITY;
  for (const auto& p : parts) {
    if (p.l > 0) m_merged = std::max(m_merged, p.m);
  }
  float l_merged = 0.0f, o_merged = 0.0f;
  for (size_t i = 0; i < parts.size(); ++i) {
    l_merged += parts[i].l * partial_scale(parts[i], m_merged);
    o_merged += outs[i] * partial_scale(parts[i], m_merged);
  }
  EXPECT_NEAR(o_merged / l_merged, want, 1e-5 * (1.0 + std::fabs(want)));
  EXPECT_EQ(softmax_weight(-INFINITY, 0.0f), 0.0f);
  EXPECT_EQ(softmax_rescale(-INFINITY, 1.0f), 0.0f);
}

}  // namespace
}  // namespace moe::kernels::cuda
