// The e4m3 weight bodies of the CUDA kernels (kernels/cuda/fused_math.h over kernels/common/fp8.h)
// on the CPU: a chunk of codes becomes bf16(code value x block scale) exactly as fp8.h's dequantise
// body gives it, the e4m3 lane dot equals the bf16 lane dot on those bf16 values bit for bit
// (same chunks, same order), and the small-batch linear's shape rules.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/common/fp8.h"
#include "kernels/cuda/fused_math.h"

namespace moe::kernels::cuda {
namespace {

TEST(FusedMathFp8, ChunkOfCodesIsBf16OfTheDequantisedValueForEveryCode) {
  for (float scale : {1.0f, 1e-3f, -2.5e-4f, 3e37f, 1e-30f}) {
    for (int c0 = 0; c0 < 256; c0 += kBf16PerVec) {
      uint8_t codes[kBf16PerVec];
      for (int e = 0; e < kBf16PerVec; ++e) codes[e] = static_cast<uint8_t>(c0 + e);
      uint16_t out[kBf16PerVec];
      e4m3_chunk_bf16_bits(codes, scale, out);
      for (int e = 0; e < kBf16PerVec; ++e) {
        const float want = e4m3_dequantise(codes[e], scale);
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(bf16_bits_to_f32(out[e]))) << c0 + e;
        } else {
          EXPECT_EQ(out[e], f32_to_bf16_bits(want)) << "code " << c0 + e << " scale " << scale;
        }
      }
    }
  }
}

TEST(FusedMathFp8, E4m3LaneDotIsTheBf16LaneDotOnTheDequantisedRow) {
  const int64_t n = 768;  // 6 blocks of 128: a Qwen3 expert's down_proj row
  std::mt19937 rng(11);
  std::vector<uint8_t> codes(static_cast<size_t>(n));
  for (uint8_t& c : codes) {
    c = static_cast<uint8_t>(rng() & 0xFF);
    if ((c & 0x7F) == 0x7F) c ^= 1;
  }
  const std::vector<float> scale_row = {1e-3f, 2e-3f, 5e-4f, 1e-2f, 3e-3f, 7e-4f};
  std::vector<uint16_t> w_bits(static_cast<size_t>(n)), x(static_cast<size_t>(n));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    w_bits[i] = f32_to_bf16_bits(e4m3_dequantise(codes[i], scale_row[i / kFp8Block]));
    x[i] = f32_to_bf16_bits(nd(rng));
  }
  for (int lane = 0; lane < kWarpLanes; ++lane) {
    const float e4m3 = expert_dot_lane_e4m3(codes.data(), scale_row.data(), x.data(), n, lane);
    const float bf16 = expert_dot_lane(w_bits.data(), x.data(), n, lane);
    EXPECT_EQ(e4m3, bf16) << "lane " << lane;
  }
}

TEST(FusedMathFp8, SmallLinearTakesWidthsOf8ThatFitSharedMemory) {
  EXPECT_TRUE(linear_small_shape_ok(2048));
  EXPECT_TRUE(linear_small_shape_ok(4096));
  EXPECT_FALSE(linear_small_shape_ok(2044));                      // not 16-byte chunks
  EXPECT_FALSE(linear_small_shape_ok(kExpertSmemBytes / 2 + 8));  // one row does not fit
  EXPECT_EQ(linear_rows_per_pass(2048, 1), 1);
  EXPECT_EQ(linear_rows_per_pass(2048, 100), std::min<int64_t>(kExpertRowsPerPass, 12));
}

}  // namespace
}  // namespace moe::kernels::cuda
