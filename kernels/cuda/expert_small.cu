// The small-batch expert SwiGLU (ExpertBatch with few rows per local slot) as two
// memory-bound kernels that read the grouping on the device (the grouped cuBLAS path's gather is
// elementwise.cu's row gather), and the small-batch linear of e4m3 weights (the fused
// dequantise-and-multiply for decode). Per-thread math and rounding points: fused_math.h
// (kGroupedSwiglu: input, gate/up, activation and output all bf16, fp32 accumulation; e4m3
// weights enter as bf16(dequantised), e4m3_chunk_bf16_bits).
//
// Work decomposition (both kernels): blockIdx.y = ordinal of an active slot (slots without rows
// are skipped by the ballot search, so the grid is sized by min(num_slots, max_pairs) and not by
// the slot count alone), blockIdx.x = a tile of kExpertWarps output features, one warp per
// feature. A warp streams its weight row(s) once per pass of up to rows_per_pass rows with
// 16-byte loads (lane l reads chunks l, l + 32, ...: coalesced 512 bytes per warp load), dots
// them with every row of the pass held in shared memory as bf16, and butterflies the lane sums.
// An e4m3 row is streamed with 8-byte loads (8 codes per chunk, 256 bytes per warp load): half
// the bytes of bf16, which is the whole point at these sizes.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/fused_math.h"

namespace moe::kernels::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = kExpertWarps * kWarpLanes;

__device__ __forceinline__ float warp_butterfly(float v) {
  for (int o = kWarpLanes / 2; o > 0; o >>= 1) v = add_rn(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// 8 bf16 of a 16-byte chunk as their bits.
struct Vec8 {
  uint16_t e[kBf16PerVec];
};
__device__ __forceinline__ Vec8 unpack_vec8(uint4 raw) {
  Vec8 v;
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v.e[2 * i] = static_cast<uint16_t>(words[i] & 0xffffu);
    v.e[2 * i + 1] = static_cast<uint16_t>(words[i] >> 16);
  }
  return v;
}

// One weight row as the warps stream it: bf16 values, or e4m3 codes with the scale row of its
// 128-row block.
struct WeightRow {
  const void* data = nullptr;
  const float* scales = nullptr;
  bool e4m3 = false;
};

__device__ __forceinline__ WeightRow weight_row(const WeightView& w, int64_t row, int64_t cols) {
  WeightRow r;
  r.e4m3 = w.dtype == WeightDtype::kE4M3;
  if (r.e4m3) {
    r.data = static_cast<const uint8_t*>(w.data) + row * cols;
    r.scales = w.scales + (row / kFp8Block) * fp8_num_blocks(cols);
  } else {
    r.data = static_cast<const bf16*>(w.data) + row * cols;
  }
  return r;
}

// Chunk c (elements 8c .. 8c + 7) of a weight row as bf16 bits.
__device__ __forceinline__ Vec8 load_chunk(const WeightRow& w, int64_t c) {
  if (!w.e4m3) {
    return unpack_vec8(
        __ldg(reinterpret_cast<const uint4*>(static_cast<const bf16*>(w.data) + c * kBf16PerVec)));
  }
  const uint2 raw =
      __ldg(reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(w.data) + c * kBf16PerVec));
  uint8_t codes[kBf16PerVec];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    codes[i] = static_cast<uint8_t>(raw.x >> (8 * i));
    codes[4 + i] = static_cast<uint8_t>(raw.y >> (8 * i));
  }
  Vec8 v;
  e4m3_chunk_bf16_bits(codes, __ldg(w.scales + c * kBf16PerVec / kFp8Block), v.e);
  return v;
}

// The warp's dot products of NW weight rows (`width` wide, bf16 or e4m3) with each of the nr rows
// of a pass in shared memory (bf16 bits, rows `width` apart). Lane l streams the chunks l,
// l + 32, ... of every weight row once (expert_dot_lane's order); the lane partials are
// butterflied, so every lane returns the full sums dots[n][r] for r < nr.
template <int NW>
__device__ __forceinline__ void warp_dots(const WeightRow (&w)[NW], const uint16_t* rows_s,
                                          int64_t width, int nr, int lane,
                                          float (&dots)[NW][kExpertRowsPerPass]) {
  const int64_t chunks = width / kBf16PerVec;
#pragma unroll
  for (int n = 0; n < NW; ++n) {
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) dots[n][r] = 0.0f;
  }
#pragma unroll 4
  for (int64_t c = lane; c < chunks; c += kWarpLanes) {
    Vec8 wv[NW];
#pragma unroll
    for (int n = 0; n < NW; ++n) wv[n] = load_chunk(w[n], c);
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) {
      if (r < nr) {
        const Vec8 xv =
            unpack_vec8(*reinterpret_cast<const uint4*>(rows_s + r * width + c * kBf16PerVec));
#pragma unroll
        for (int n = 0; n < NW; ++n) dots[n][r] = dot8_bf16(dots[n][r], wv[n].e, xv.e);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kExpertRowsPerPass; ++r) {
    if (r < nr) {  // nr is warp-uniform: every lane joins the butterflies
#pragma unroll
      for (int n = 0; n < NW; ++n) dots[n][r] = warp_butterfly(dots[n][r]);
    }
  }
}

// Warp 0 finds the CTA's slot (active_slot() with a ballot per 32 slots); every thread gets it.
__device__ int find_slot(const int32_t* slot_begin, int64_t num_slots, int64_t ordinal) {
  __shared__ int slot;
  if (threadIdx.x < kWarpLanes) {
    const int lane = threadIdx.x;
    int found = -1;
    int64_t seen = 0;
    for (int64_t base = 0; base < num_slots && found < 0; base += kWarpLanes) {
      const int64_t s = base + lane;
      const bool has_rows = s < num_slots && slot_begin[s + 1] > slot_begin[s];
      const unsigned mask = __ballot_sync(kFull, has_rows);
      const int count = __popc(mask);
      if (ordinal < seen + count) {
        int want = static_cast<int>(ordinal - seen);
        for (int b = 0; b < kWarpLanes; ++b) {
          if ((mask >> b) & 1u) {
            if (want == 0) {
              found = static_cast<int>(base + b);
              break;
            }
            --want;
          }
        }
      }
      seen += count;
    }
    if (lane == 0) slot = found;
  }
  __syncthreads();
  return slot;
}

// What the warps of an expert CTA work on: the CTA's slot (the blockIdx.y-th with rows; -1 when
// fewer slots have rows) and its pairs [begin, end), and the warp's output feature
// blockIdx.x * kExpertWarps + warp, active when below `features`.
struct ExpertCta {
  int slot = -1;
  int64_t begin = 0, end = 0;
  ExpertWeights weights;
  int lane = 0;
  int64_t feature = 0;
  bool active = false;
};

__device__ __forceinline__ ExpertCta expert_cta(const int32_t* slot_begin,
                                                const ExpertWeights* slot_weights,
                                                int64_t num_slots, int64_t features) {
  ExpertCta c;
  c.slot = find_slot(slot_begin, num_slots, blockIdx.y);
  if (c.slot < 0) return c;
  c.begin = slot_begin[c.slot];
  c.end = slot_begin[c.slot + 1];
  c.weights = slot_weights[c.slot];
  c.lane = threadIdx.x & 31;
  c.feature = static_cast<int64_t>(blockIdx.x) * kExpertWarps + (threadIdx.x >> 5);
  c.active = c.feature < features;
  return c;
}

// Block-wide: the CTA's pairs in passes of up to rows_per_pass rows. load(r0, nr) fills shared
// memory with pairs r0 .. r0 + nr; once every thread sees them, each active warp runs
// compute(r0, nr).
template <class Load, class Compute>
__device__ __forceinline__ void for_each_pass(const ExpertCta& cta, int rows_per_pass, Load load,
                                              Compute compute) {
  for (int64_t r0 = cta.begin; r0 < cta.end; r0 += rows_per_pass) {
    const int nr = static_cast<int>(std::min<int64_t>(rows_per_pass, cta.end - r0));
    __syncthreads();  // the previous pass is done with shared memory
    load(r0, nr);
    __syncthreads();
    if (cta.active) compute(r0, nr);
  }
}

// act[p, o] = swiglu_act_bits(gate_o . x_p, up_o . x_p) for the pairs p of the CTA's slot.
// x rows come from x[row_index[p]] (fp32), rounded to bf16 into shared memory, or from
// x_bf16[row_index[p]] copied as they are.
__global__ void __launch_bounds__(kThreads)
    expert_gate_up_kernel(const float* x, const bf16* x_bf16, int64_t hidden, int64_t inter,
                          const int32_t* row_index, const int32_t* slot_begin,
                          const ExpertWeights* slot_weights, int64_t num_slots, int rows_per_pass,
                          bf16* act) {
  extern __shared__ __align__(16) uint16_t xs[];  // [rows_per_pass, hidden] bf16 bits
  const ExpertCta cta = expert_cta(slot_begin, slot_weights, num_slots, inter);
  if (cta.slot < 0) return;  // fewer active slots than grid rows: the whole CTA leaves
  const int64_t o = cta.feature;
  const WeightRow rows[2] = {weight_row(cta.weights.gate, cta.active ? o : 0, hidden),
                             weight_row(cta.weights.up, cta.active ? o : 0, hidden)};
  auto load = [&](int64_t r0, int nr) {
    if (x_bf16 != nullptr) {  // 16-byte chunks of bf16 rows
      for (int64_t i = threadIdx.x; i < nr * hidden / kBf16PerVec; i += kThreads) {
        const int64_t r = (i * kBf16PerVec) / hidden, c = (i * kBf16PerVec) % hidden;
        *reinterpret_cast<uint4*>(xs + r * hidden + c) = *reinterpret_cast<const uint4*>(
            x_bf16 + static_cast<int64_t>(row_index[r0 + r]) * hidden + c);
      }
      return;
    }
    for (int64_t i = threadIdx.x; i < nr * hidden / 4; i += kThreads) {
      const int64_t r = (i * 4) / hidden, c = (i * 4) % hidden;
      const float4 v = *reinterpret_cast<const float4*>(
          x + static_cast<int64_t>(row_index[r0 + r]) * hidden + c);
      uint16_t* d = xs + r * hidden + c;
      d[0] = f32_to_bf16_bits(v.x);
      d[1] = f32_to_bf16_bits(v.y);
      d[2] = f32_to_bf16_bits(v.z);
      d[3] = f32_to_bf16_bits(v.w);
    }
  };
  auto compute = [&](int64_t r0, int nr) {
    float dots[2][kExpertRowsPerPass];
    warp_dots(rows, xs, hidden, nr, cta.lane, dots);
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) {
      if (r < nr && cta.lane == 0) {
        act[(r0 + r) * inter + o].bits = swiglu_act_bits(dots[0][r], dots[1][r]);
      }
    }
  };
  for_each_pass(cta, rows_per_pass, load, compute);
}

// out[p, h] = expert_out_value(down_h . act_p) for the pairs p of the CTA's slot, or its bf16
// bits into out_bf16 when that is given.
__global__ void __launch_bounds__(kThreads)
    expert_down_kernel(const bf16* act, int64_t hidden, int64_t inter, const int32_t* slot_begin,
                       const ExpertWeights* slot_weights, int64_t num_slots, int rows_per_pass,
                       float* out, bf16* out_bf16) {
  extern __shared__ __align__(16) uint16_t as[];  // [rows_per_pass, inter] bf16 bits
  const ExpertCta cta = expert_cta(slot_begin, slot_weights, num_slots, hidden);
  if (cta.slot < 0) return;
  const int64_t h = cta.feature;
  const WeightRow rows[1] = {weight_row(cta.weights.down, cta.active ? h : 0, inter)};
  auto load = [&](int64_t r0, int nr) {
    // act rows of the pass are contiguous: pairs r0 .. r0 + nr, 16-byte chunks.
    const uint4* src = reinterpret_cast<const uint4*>(act + r0 * inter);
    uint4* dst = reinterpret_cast<uint4*>(as);
    for (int64_t i = threadIdx.x; i < nr * inter / kBf16PerVec; i += kThreads) dst[i] = src[i];
  };
  auto compute = [&](int64_t r0, int nr) {
    float dots[1][kExpertRowsPerPass];
    warp_dots(rows, as, inter, nr, cta.lane, dots);
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) {
      if (r >= nr || cta.lane != 0) continue;
      if (out_bf16 != nullptr) {
        out_bf16[(r0 + r) * hidden + h].bits = f32_to_bf16_bits(dots[0][r]);
      } else {
        out[(r0 + r) * hidden + h] = expert_out_value(dots[0][r]);
      }
    }
  };
  for_each_pass(cta, rows_per_pass, load, compute);
}

// y[r, o] = (bf16 row r of x) . (W row o as bf16 operands), fp32 (rounding.h: linear rounds its
// input, not its output). x rows come from x_bf16 when given, else are rounded from x.
__global__ void __launch_bounds__(kThreads)
    linear_small_kernel(const float* x, const bf16* x_bf16, WeightView w, int64_t in, int64_t out,
                        int64_t rows, int rows_per_pass, float* y) {
  extern __shared__ __align__(16) uint16_t xs[];  // [rows_per_pass, in] bf16 bits
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kExpertWarps + (threadIdx.x >> 5);
  const bool active = o < out;
  const WeightRow row[1] = {weight_row(w, active ? o : 0, in)};
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_pass) {
    const int nr = static_cast<int>(std::min<int64_t>(rows_per_pass, rows - r0));
    __syncthreads();  // the previous pass is done with shared memory
    for (int64_t i = threadIdx.x; i < nr * in; i += kThreads) {
      xs[i] = x_bf16 != nullptr ? x_bf16[r0 * in + i].bits : f32_to_bf16_bits(x[r0 * in + i]);
    }
    __syncthreads();
    if (!active) continue;
    float dots[1][kExpertRowsPerPass];
    warp_dots(row, xs, in, nr, lane, dots);
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) {
      if (r < nr && lane == 0) y[(r0 + r) * out + o] = dots[0][r];
    }
  }
}

}  // namespace

cudaError_t launch_linear_small(const float* x, const bf16* x_bf16, WeightView w, int64_t in,
                                int64_t out, int64_t rows, float* y, cudaStream_t stream) {
  if (rows <= 0 || out <= 0) return cudaGetLastError();
  if (!linear_small_shape_ok(in) || (x == nullptr && x_bf16 == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const int rows_per_pass = linear_rows_per_pass(in, rows);
  const dim3 grid(static_cast<unsigned>((out + kExpertWarps - 1) / kExpertWarps));
  const size_t smem = static_cast<size_t>(rows_per_pass) * in * sizeof(uint16_t);
  linear_small_kernel<<<grid, kThreads, smem, stream>>>(x, x_bf16, w, in, out, rows, rows_per_pass,
                                                        y);
  return cudaGetLastError();
}

cudaError_t launch_expert_swiglu_small(const float* x, const bf16* x_bf16, int64_t hidden,
                                       int64_t inter, const int32_t* row_index,
                                       const int32_t* slot_begin, const ExpertWeights* slot_weights,
                                       int64_t num_slots, int64_t max_active_slots,
                                       int rows_per_pass, bf16* act, float* out, bf16* out_bf16,
                                       cudaStream_t stream) {
  if (num_slots <= 0 || max_active_slots <= 0) return cudaGetLastError();
  if (!expert_small_shape_ok(hidden, inter) || rows_per_pass < 1 ||
      rows_per_pass > kExpertRowsPerPass || max_active_slots > 65535) {
    return cudaErrorInvalidValue;
  }
  const unsigned slots = static_cast<unsigned>(std::min(max_active_slots, num_slots));
  const dim3 grid_gu(static_cast<unsigned>((inter + kExpertWarps - 1) / kExpertWarps), slots);
  const size_t smem_gu = static_cast<size_t>(rows_per_pass) * hidden * sizeof(uint16_t);
  expert_gate_up_kernel<<<grid_gu, kThreads, smem_gu, stream>>>(
      x, x_bf16, hidden, inter, row_index, slot_begin, slot_weights, num_slots, rows_per_pass, act);
  const cudaError_t rc = cudaGetLastError();
  if (rc != cudaSuccess) return rc;
  const dim3 grid_d(static_cast<unsigned>((hidden + kExpertWarps - 1) / kExpertWarps), slots);
  const size_t smem_d = static_cast<size_t>(rows_per_pass) * inter * sizeof(uint16_t);
  expert_down_kernel<<<grid_d, kThreads, smem_d, stream>>>(
      act, hidden, inter, slot_begin, slot_weights, num_slots, rows_per_pass, out, out_bf16);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
