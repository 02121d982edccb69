// Per-thread bodies of the fused CUDA kernels (fused.cu: RMSNorm with a residual add and a bf16
// copy, per-head q/k RMSNorm + RoPE; expert_small.cu: the small-batch expert SwiGLU), written
// once as MOE_HD functions so tests/gpu_host runs the same arithmetic on the CPU.
//
// fp32 rounding is spelled out: mul_rn / add_rn / sub_rn never contract into an FMA on the device
// (nvcc contracts a * b + c by default), and fma_rn is a fused multiply-add on both sides, so a
// CPU emulation built from these bodies computes the device's bits. The only functions whose
// results may differ between the two sides are the libm ones (cosf, sinf, expf).
//
// Warp sums are butterflies: with __shfl_xor_sync offsets 16, 8, 4, 2, 1 lane t adds lane
// t ^ offset; fp32 addition is commutative, so every lane ends with the same value, which
// warp_sum_emulated reproduces from the 32 lane values.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/common/fp8.h"
#include "kernels/cuda/device_math.h"

namespace moe::kernels::cuda {

MOE_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

MOE_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

MOE_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

MOE_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Lanes of a warp; the warp-sum emulation and every lane mapping below assume it.
inline constexpr int kWarpLanes = 32;

// The butterfly sum of v[0..32) as every lane of the device warp computes it.
inline float warp_sum_emulated(const float* v) {
  float lanes[kWarpLanes];
  for (int t = 0; t < kWarpLanes; ++t) lanes[t] = v[t];
  for (int offset = kWarpLanes / 2; offset > 0; offset >>= 1) {
    float next[kWarpLanes];
    for (int t = 0; t < kWarpLanes; ++t) next[t] = add_rn(lanes[t], lanes[t ^ offset]);
    for (int t = 0; t < kWarpLanes; ++t) lanes[t] = next[t];
  }
  return lanes[0];
}

// ---- RMSNorm over a row of `dim` (fused.cu's row kernel: one block per row) ----

// Threads of the row kernel: whole warps, enough for the row, at most 256 (as elementwise.cu's
// rmsnorm). Thread t handles elements t, t + threads, ...
MOE_HD int norm_row_threads(int64_t dim) {
  int64_t t = (dim + 31) / 32 * 32;
  if (t > 256) t = 256;
  if (t < 32) t = 32;
  return static_cast<int>(t);
}

// Thread t's partial sum of squares, in element order (the fma chain of elementwise.cu's rmsnorm
// loop `sum_sq += x * x`).
MOE_HD float sumsq_partial(const float* x, int64_t dim, int t, int threads) {
  float s = 0.0f;
  for (int64_t c = t; c < dim; c += threads) s = fma_rn(x[c], x[c], s);
  return s;
}

// 1 / sqrt(mean square + eps) as the CPU computes it (correctly rounded divide and sqrt).
MOE_HD float rms_inverse(float sum_sq, int64_t dim, float eps) {
  return 1.0f / sqrtf(add_rn(sum_sq / static_cast<float>(dim), eps));
}

// One normalised element: (x * inv_rms) * w, the CPU's and HF's order.
MOE_HD float norm_scale(float x, float inv_rms, float w) {
  return mul_rn(mul_rn(x, inv_rms), w);
}

// ---- Per-head q/k RMSNorm + RoPE (fused.cu: one warp per (row, head)) ----

// Head dims the fused kernel takes: lane l holds elements l + 32 j for j < head_dim / 32, and a
// rotate-half pair (i, i + head_dim / 2) must sit in one lane, hence multiples of 64; at most
// 256 keeps the eight values per lane in registers. Other head dims run rmsnorm then rope.
inline constexpr int64_t kQkMaxHeadDim = 256;
MOE_HD bool qk_fused_head_dim_ok(int64_t head_dim) {
  return head_dim > 0 && head_dim % 64 == 0 && head_dim <= kQkMaxHeadDim;
}

// Rotate-half RoPE of one pair (a = x[i], b = x[i + half]) at `pos`, fp32 as the CPU computes
// it: angle = float(pos) * inv_freq[i]; a' = a cos - b sin, b' = b cos + a sin, each product
// rounded.
MOE_HD void rope_pair(float& a, float& b, float pos, float inv_freq) {
  const float angle = mul_rn(pos, inv_freq);
#if defined(__CUDA_ARCH__)
  const float c = cosf(angle), s = sinf(angle);
#else
  const float c = std::cos(angle), s = std::sin(angle);
#endif
  const float a2 = sub_rn(mul_rn(a, c), mul_rn(b, s));
  const float b2 = add_rn(mul_rn(b, c), mul_rn(a, s));
  a = a2;
  b = b2;
}

// ---- Small-batch expert SwiGLU (expert_small.cu) ----

// Elements per 16-byte load of bf16 weights or activations.
inline constexpr int kBf16PerVec = 8;

// acc + sum_e w[e] * x[e] over the 8 bf16 values of one 16-byte chunk, in e order. w and x are
// bf16, so each product is exact in fp32 and fma_rn rounds only the sums.
MOE_HD float dot8_bf16(float acc, const uint16_t* w, const uint16_t* x) {
  for (int e = 0; e < kBf16PerVec; ++e) {
    acc = fma_rn(bf16_bits_to_f32(w[e]), bf16_bits_to_f32(x[e]), acc);
  }
  return acc;
}

// Lane `lane`'s partial of dot(w, x) over n elements (n % 8 == 0): chunks lane, lane + 32, ...
// of 8 elements, in chunk order. The warp's result is the butterfly of the 32 partials.
MOE_HD float expert_dot_lane(const uint16_t* w, const uint16_t* x, int64_t n, int lane) {
  float acc = 0.0f;
  for (int64_t c = lane; c < n / kBf16PerVec; c += kWarpLanes) {
    acc = dot8_bf16(acc, w + c * kBf16PerVec, x + c * kBf16PerVec);
  }
  return acc;
}

// The bf16 operands of one 8-element chunk of an e4m3 weight row (all in one 128-column block,
// scale s): each code dequantised (fp8.h) and rounded to bf16, the weight operand of bf16
// compute; the CPU's weight_rows_to_bf16 gives the same bits.
MOE_HD void e4m3_chunk_bf16_bits(const uint8_t* codes, float scale, uint16_t* out) {
  for (int e = 0; e < kBf16PerVec; ++e) out[e] = f32_to_bf16_bits(e4m3_dequantise(codes[e], scale));
}

// expert_dot_lane for an e4m3 weight row: codes [n] with the row's block scales (one per 128
// columns), x bf16 bits [n]; the same chunks in the same order.
MOE_HD float expert_dot_lane_e4m3(const uint8_t* codes, const float* scale_row, const uint16_t* x,
                                  int64_t n, int lane) {
  float acc = 0.0f;
  for (int64_t c = lane; c < n / kBf16PerVec; c += kWarpLanes) {
    uint16_t w[kBf16PerVec];
    e4m3_chunk_bf16_bits(codes + c * kBf16PerVec, scale_row[c * kBf16PerVec / kFp8Block], w);
    acc = dot8_bf16(acc, w, x + c * kBf16PerVec);
  }
  return acc;
}

// kGroupedSwiglu rounding of one intermediate element: gate and up GEMM outputs rounded to bf16,
// silu(gate) * up in fp32 from the rounded values, rounded to bf16 (the act bits).
MOE_HD uint16_t swiglu_act_bits(float gate_sum, float up_sum) {
  const float g = bf16_bits_to_f32(f32_to_bf16_bits(gate_sum));
  const float u = bf16_bits_to_f32(f32_to_bf16_bits(up_sum));
  return f32_to_bf16_bits(silu(g) * u);
}

// kGroupedSwiglu rounding of the down GEMM output: bf16, widened to the fp32 out row.
MOE_HD float expert_out_value(float down_sum) {
  return bf16_bits_to_f32(f32_to_bf16_bits(down_sum));
}

// Warps per CTA of the small-batch expert kernels, one output feature each.
inline constexpr int kExpertWarps = 4;
// Rows of one pass held in shared memory (and accumulators per lane, per projection): a slot
// with more rows takes several passes, each re-reading the weight tile (then mostly from L2).
inline constexpr int kExpertRowsPerPass = 8;
// Most rows in any slot for which the backend takes the small-batch kernels when the host knows
// the counts (beyond that the cuBLAS grouped GEMM): up to two passes the kernels still stream
// each weight byte from HBM about once, which is the whole cost at these sizes; with more rows a
// tensor-core GEMM, which reuses each weight tile across all rows, wins. When the counts exist
// only on the device the small kernels run whatever the counts (correct, slower if large).
inline constexpr int64_t kExpertSmallMaxRows = 16;
// Shared memory of one CTA (the default limit, no opt-in): rows_per_pass rows of bf16.
inline constexpr int64_t kExpertSmemBytes = 48 * 1024;

// Shapes the small-batch kernels take: 16-byte chunks of every row (widths % 8; an e4m3 row's
// chunk is 8 bytes) and at least one row of the wider input in shared memory.
MOE_HD bool expert_small_shape_ok(int64_t hidden, int64_t inter) {
  const int64_t widest = hidden > inter ? hidden : inter;
  return hidden > 0 && inter > 0 && hidden % kBf16PerVec == 0 && inter % kBf16PerVec == 0 &&
         widest * 2 <= kExpertSmemBytes;
}

// Rows per pass: kExpertRowsPerPass, fewer when shared memory or the largest slot (max_rows,
// when known; else pass the pair capacity) needs fewer.
MOE_HD int expert_rows_per_pass(int64_t hidden, int64_t inter, int64_t max_rows) {
  const int64_t widest = hidden > inter ? hidden : inter;
  int64_t r = kExpertSmemBytes / (widest * 2);
  if (r > kExpertRowsPerPass) r = kExpertRowsPerPass;
  if (max_rows >= 1 && r > max_rows) r = max_rows;
  return static_cast<int>(r < 1 ? 1 : r);
}

// The small-batch linear (y = x W^T for a few rows of x, e4m3 W): rows of `in` in shared memory.
MOE_HD bool linear_small_shape_ok(int64_t in) {
  return in > 0 && in % kBf16PerVec == 0 && in * 2 <= kExpertSmemBytes;
}
// Rows per pass of the small-batch linear.
MOE_HD int linear_rows_per_pass(int64_t in, int64_t rows) {
  int64_t r = kExpertSmemBytes / (in * 2);
  if (r > kExpertRowsPerPass) r = kExpertRowsPerPass;
  if (rows >= 1 && r > rows) r = rows;
  return static_cast<int>(r < 1 ? 1 : r);
}

// The `ordinal`-th local slot (0-based) with rows, i.e. slot_begin[s + 1] > slot_begin[s], or
// -1 when fewer slots have rows. The kernels launch one CTA row per possible active slot and
// find theirs with a warp ballot over 32 slots at a time; this is the same answer, slot by slot.
MOE_HD int active_slot(const int32_t* slot_begin, int64_t num_slots, int64_t ordinal) {
  int64_t seen = 0;
  for (int64_t s = 0; s < num_slots; ++s) {
    if (slot_begin[s + 1] > slot_begin[s]) {
      if (seen == ordinal) return static_cast<int>(s);
      ++seen;
    }
  }
  return -1;
}

}  // namespace moe::kernels::cuda
