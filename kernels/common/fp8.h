// FP8 E4M3 ("e4m3fn": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, the
// all-ones code is NaN, the largest finite value 448), as the published FP8 checkpoints and
// DeepEP's FP8 dispatch store it, and block scaling: a block of values shares one fp32 scale s,
// stored as q = e4m3(x / s) and read back as e4m3_to_float(q) * s. Per-element bodies shared by
// the CUDA kernels and the CPU (MOE_HD), so both round the same way. Weights are quantised in
// 128 x 128 blocks: a matrix [rows, cols] has scales [ceil(rows / 128), ceil(cols / 128)],
// row-major (the published checkpoints' `weight_scale_inv`).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/common/host_device.h"

namespace moe::kernels {

inline constexpr float kE4m3Max = 448.0f;
// Elements per scaling block along a row (DeepEP's FP8 dispatch, the published checkpoints'
// 128 x 128 weight blocks).
inline constexpr int64_t kFp8Block = 128;

MOE_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
#endif
}

MOE_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
#endif
}

// The value of an e4m3 code (NaN for 0x7F and 0xFF). Branch-free, as float_to_e4m3.
MOE_HD float e4m3_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t e = (code >> 3) & 0xFu, m = code & 0x7u;
  // Normal: rebias the exponent (7 -> 127) and widen the mantissa (3 -> 23 bits).
  const uint32_t normal = sign | ((e + 120u) << 23) | (m << 20);
  // Subnormal: m / 8 * 2^-6, exact in fp32, with the code's sign (-0 for 0x80).
  const uint32_t subnormal = sign | float_bits(static_cast<float>(m) * (1.0f / 512.0f));
  uint32_t bits = e == 0 ? subnormal : normal;
  bits = (code & 0x7Fu) == 0x7Fu ? sign | 0x7FC00000u : bits;
  return bits_float(bits);
}

// x rounded to the nearest e4m3 value (ties to even), saturating to +-448 (a finite input above
// the range, and +-inf, give +-448); NaN gives 0x7F with x's sign.
// Branch-free (both ranges computed, one selected), so that host loops over it vectorise.
MOE_HD uint8_t float_to_e4m3(float x) {
  const uint32_t bits = float_bits(x);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t a = bits & 0x7FFFFFFFu;
  // |x| >= 2^-6, the normal range: the mantissa rounded to 3 bits at bit 20, ties to even (a carry
  // bumps the exponent), the exponent rebiased (127 -> 7); past 448 (code 0x7E; inf included) it
  // saturates.
  const uint32_t rounded = (a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20;
  const uint32_t normal = rounded - (120u << 3);
  const uint32_t saturated = normal > 0x7Eu ? 0x7Eu : normal;
  // Below: multiples of 2^-9, |x| * 512 (exact: a power-of-two scaling) rounded to an integer,
  // ties to even, by adding 2^23 (below 2^23 the sum's last bit is the integer's unit; 8 is
  // 2^-6, the smallest normal, code 0x08).
  const float q = bits_float(a) * 512.0f;
  const uint32_t subnormal = float_bits(q + 8388608.0f) - 0x4B000000u;
  uint32_t code = a >= 0x3C800000u ? saturated : subnormal;
  code = a > 0x7F800000u ? 0x7Fu : code;  // NaN
  return static_cast<uint8_t>(sign | code);
}

// The scale of a block whose largest magnitude is amax: the block's largest value maps to 448.
// An all-zero block gets scale 1.
MOE_HD float e4m3_block_scale(float amax) {
  return amax > 0.0f ? amax / kE4m3Max : 1.0f;
}

// One value of a block with scale s: e4m3(x / s) (the division correctly rounded on both sides).
MOE_HD uint8_t e4m3_quantise(float x, float scale) {
  return float_to_e4m3(x / scale);
}

// ---- 128 x 128 block-scaled weight matrices (the 2-D dequantise body both backends run) ----

// Blocks along a dimension of n elements (the last one may be partial).
MOE_HD int64_t fp8_num_blocks(int64_t n) {
  return (n + kFp8Block - 1) / kFp8Block;
}

// Scales of a [rows, cols] matrix.
MOE_HD int64_t fp8_num_scales(int64_t rows, int64_t cols) {
  return fp8_num_blocks(rows) * fp8_num_blocks(cols);
}

// The dequantised weight: the code's value times its block's scale, one fp32 rounding (no FMA
// contraction on the device, so the CPU computes the same bits).
MOE_HD float e4m3_dequantise(uint8_t code, float scale) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(e4m3_to_float(code), scale);
#else
  return e4m3_to_float(code) * scale;
#endif
}

// Element c of row r of an e4m3 matrix with `cols` columns: codes [rows, cols] and the block
// scales [ceil(rows / 128), ceil(cols / 128)].
MOE_HD float e4m3_matrix_value(const uint8_t* codes, const float* scales, int64_t cols, int64_t r,
                               int64_t c) {
  return e4m3_dequantise(codes[r * cols + c],
                         scales[(r / kFp8Block) * fp8_num_blocks(cols) + c / kFp8Block]);
}

// Quantises block (br, bc) of a [rows, cols] fp32 matrix w: the block's scale from its largest
// magnitude (e4m3_block_scale) into scales[br * ceil(cols / 128) + bc], then each of its values
// (e4m3_quantise) into codes, same index as in w.
MOE_HD void e4m3_quantise_block(const float* w, int64_t rows, int64_t cols, int64_t br, int64_t bc,
                                uint8_t* codes, float* scales) {
  const int64_t r0 = br * kFp8Block, c0 = bc * kFp8Block;
  const int64_t r1 = r0 + kFp8Block < rows ? r0 + kFp8Block : rows;
  const int64_t c1 = c0 + kFp8Block < cols ? c0 + kFp8Block : cols;
  float amax = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      const float m = fabsf(w[r * cols + c]);
      amax = m > amax ? m : amax;  // fmaxf's answer (a NaN is skipped) without a libm call
    }
  }
  const float s = e4m3_block_scale(amax);
  scales[br * fp8_num_blocks(cols) + bc] = s;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) codes[r * cols + c] = e4m3_quantise(w[r * cols + c], s);
  }
}

// Columns [c0, c0 + n) of row r dequantised to fp32 (any span; blocks change every 128 columns).
MOE_HD void e4m3_dequantise_row(const uint8_t* codes, const float* scales, int64_t cols, int64_t r,
                                int64_t c0, int64_t n, float* out) {
  const uint8_t* q = codes + r * cols;
  const float* s = scales + (r / kFp8Block) * fp8_num_blocks(cols);
  for (int64_t c = c0; c < c0 + n; ++c) out[c - c0] = e4m3_dequantise(q[c], s[c / kFp8Block]);
}

}  // namespace moe::kernels
