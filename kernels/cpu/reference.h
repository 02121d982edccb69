// Naive loop versions of every op in ops.h (the same declarations, op_signatures.h, and the same
// contracts), written to be obviously correct rather than fast: dot products accumulate in
// double, no blocking, no BLAS. Used by the unit tests as ground truth and as executable
// documentation of the semantics. Where the loops pin down more than the contract:
// - f32_to_bf16 compares the two neighbouring bf16 values (ties to even mantissa); NaN maps to a
//   quiet NaN with the same sign and top payload bits, overflow past the largest bf16 to inf.
// - rope: inv_freq[i] = 1 / theta^(2i/head_dim) and angle = pos * inv_freq[i], both in float32
//   as HF transformers computes them; cos/sin in float32.
// - grouped_expert_swiglu computes one entry at a time (no grouping).
#pragma once

#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/op_args.h"

namespace moe::kernels::cpu::reference {

#include "kernels/cpu/op_signatures.h"

// dst[i] = sum over j in [offsets[i], offsets[i+1]) of weights[j] * src[src_index[j]] (weights ==
// nullptr means 1), summed in j order from 0.0f in fp32: the fixed-order combine of expert
// parallelism, as the tests check the layout bodies' combine against it. src [*, width],
// dst [n, width].
void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                      const float* weights, const int64_t* offsets, int64_t n, float* dst);

}  // namespace moe::kernels::cpu::reference
