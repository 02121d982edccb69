// Rows of a weight matrix (WeightView, kernels/op_args.h) converted for the CPU GEMMs a few at a
// time, so no whole-matrix copy of a weight ever exists: bf16 widened exactly, e4m3 dequantised
// with kernels/common/fp8.h's e4m3_dequantise (the vector path below computes the same bits).
#pragma once

#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/op_args.h"

namespace moe::kernels::cpu {

// dst [nr, cols] = rows [r0, r0 + nr) of w (a matrix with `cols` columns) as fp32.
void weight_rows_to_f32(WeightView w, int64_t cols, int64_t r0, int64_t nr, float* dst);

// x [cols] . row r of an e4m3 matrix, fp32, without writing the row out (decode's one-row
// linear): per 128-column block the products of x with the code values, times the block's scale
// (the same terms as x . dequantised row up to fp32 rounding; a NaN code gives NaN).
// path: the fastest this CPU has (kBest), or one named for tests (a missing one runs the scalar
// loop; has_dot_path says which exist).
enum class DotPath { kBest, kAvx512, kAvx2, kScalar };
float dot_e4m3_row(const float* x, WeightView w, int64_t cols, int64_t r,
                   DotPath path = DotPath::kBest);
bool has_dot_path(DotPath path);

// The same rows as the bf16 operand of bf16 compute: bf16 weights as stored, e4m3 weights as
// bf16(dequantised value) (round to nearest even).
void weight_rows_to_bf16(WeightView w, int64_t cols, int64_t r0, int64_t nr, bf16* dst);

}  // namespace moe::kernels::cpu
