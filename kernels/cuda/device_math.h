// Scalar math shared by the CUDA kernels and their CPU emulations in tests/gpu_host: bf16 bit
// conversions, SiLU, and the online-softmax state (running max m, running sum l) with its rescale
// and merge rules. Every function is __host__ __device__ so the CPU tests run the same arithmetic.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/common/bf16.h"
#include "kernels/common/host_device.h"

namespace moe::kernels::cuda {

// The bits of a 32-bit value as another 32-bit type. memcpy is the defined way in C++17 on the
// host, and nvcc turns it into a register move on the device.
template <class To, class From>
MOE_HD To bit_cast32(From x) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "32-bit types only");
  To y;
  memcpy(&y, &x, sizeof y);
  return y;
}

MOE_HD float bits_to_f32(uint32_t u) {
  return bit_cast32<float>(u);
}
MOE_HD uint32_t f32_to_bits(float f) {
  return bit_cast32<uint32_t>(f);
}

// bf16 bits -> fp32, exact.
MOE_HD float bf16_bits_to_f32(uint16_t b) {
  return bits_to_f32(static_cast<uint32_t>(b) << 16);
}

// fp32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN (same rule as common/bf16.h).
MOE_HD uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

MOE_HD float load_bf16(const bf16* p) {
  return bf16_bits_to_f32(p->bits);
}
MOE_HD void store_bf16(bf16* p, float v) {
  p->bits = f32_to_bf16_bits(v);
}

MOE_HD float silu(float g) {
  return g / (1.0f + expf(-g));
}

// exp(m_old - m_new) with the convention that an empty state (m_old == -inf) contributes 0.
MOE_HD float softmax_rescale(float m_old, float m_new) {
  return m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
}

// exp(score - m) for a kept score; masked scores (-inf) give exactly 0.
MOE_HD float softmax_weight(float score, float m) {
  return score == -INFINITY ? 0.0f : expf(score - m);
}

// One split's share of a softmax row: running max m, running sum l = sum exp(s - m).
// Merging splits: M = max m_s, L = sum l_s exp(m_s - M), o = sum o_s exp(m_s - M) / L.
struct SoftmaxPartial {
  float m = -INFINITY;
  float l = 0.0f;
};

// Scale factor that brings split `p` onto the merged max `m_merged`.
MOE_HD float partial_scale(SoftmaxPartial p, float m_merged) {
  return p.l == 0.0f ? 0.0f : softmax_rescale(p.m, m_merged);
}

}  // namespace moe::kernels::cuda
