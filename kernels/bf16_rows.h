// Rows converted between fp32 and bf16 on the host, n elements at a time: the one place the
// host's bulk conversions live (the exchange's wire rows, the combine, the bf16 GEMM operands).
// Every function gives, element for element, the bits of bf16.h's conversions: round to nearest
// even, NaN kept quiet, subnormals kept, whatever the CPU. On CPUs with AVX512-BF16 the narrowing
// runs on its convert instruction (one per 16 elements; it treats subnormal inputs as zero, so a
// group of 16 holding one goes through the portable loop), elsewhere on the portable loop, which
// gets AVX-512 and AVX2 clones picked at load time.
#pragma once

#include <cstdint>

namespace moe::kernels {

// dst[i] = bits of float_to_bf16(src[i]).
void narrow_bf16(const float* src, int64_t n, uint16_t* dst);
// dst[i] = round_to_bf16(src[i]): the bf16 value, widened back. src and dst may be the same.
void round_bf16(const float* src, int64_t n, float* dst);
// dst[i] = widened src[i] (exact), or dst[i] + widened src[i] when `add`.
void widen_bf16(const uint16_t* src, int64_t n, bool add, float* dst);
// The weighted sum of `count` bf16 rows, s[i] = w[0] * rows[0][i] + w[1] * rows[1][i] + ... in
// that order, each product rounded to fp32 before its add (never a fused multiply-add; s = 0 when
// count is 0), for i < n, and where it goes:
enum class SumTo {
  kStore,   // out[i] = s[i]
  kAdd,     // out[i] = out[i] + s[i]
  kAddSum,  // out[i] = out[i] + (acc[i] + s[i])
  kNarrow,  // bits[i] = bits of float_to_bf16(s[i])
};
struct WeightedRows {
  const uint16_t* const* rows = nullptr;
  const float* weights = nullptr;
  int32_t count = 0;
};
void weighted_sum_bf16(WeightedRows terms, int64_t n, SumTo to, float* out, const float* acc,
                       uint16_t* bits);

}  // namespace moe::kernels
