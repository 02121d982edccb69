// The small-batch expert SwiGLU (ResidentExpertBatch with few rows per local slot) as two
// memory-bound kernels that read the grouping on the device, and the device-side gather of the
// grouped cuBLAS path. Per-thread math and rounding points: fused_math.h (kGroupedSwiglu: input,
// gate/up, activation and output all bf16, fp32 accumulation).
//
// Work decomposition (both kernels): blockIdx.y = ordinal of an active slot (slots without rows
// are skipped by the ballot search, so the grid is sized by min(num_slots, max_pairs) and not by
// the slot count alone), blockIdx.x = a tile of kExpertWarps output features, one warp per
// feature. A warp streams its weight row(s) once per pass of up to rows_per_pass rows with
// 16-byte loads (lane l reads chunks l, l + 32, ...: coalesced 512 bytes per warp load), dots
// them with every row of the pass held in shared memory as bf16, and butterflies the lane sums.
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
__device__ __forceinline__ Vec8 load_vec8(const bf16* p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  Vec8 v;
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v.e[2 * i] = static_cast<uint16_t>(words[i] & 0xffffu);
    v.e[2 * i + 1] = static_cast<uint16_t>(words[i] >> 16);
  }
  return v;
}
__device__ __forceinline__ Vec8 load_vec8_shared(const uint16_t* p) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  Vec8 v;
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v.e[2 * i] = static_cast<uint16_t>(words[i] & 0xffffu);
    v.e[2 * i + 1] = static_cast<uint16_t>(words[i] >> 16);
  }
  return v;
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

// act[p, o] = swiglu_act_bits(gate_o . x_p, up_o . x_p) for the pairs p of the CTA's slot.
// x rows come from x[row_index[p]] (fp32), rounded to bf16 into shared memory.
__global__ void __launch_bounds__(kThreads)
    expert_gate_up_kernel(const float* x, int64_t hidden, int64_t inter, const int32_t* row_index,
                          const int32_t* slot_begin, const ExpertWeights* slot_weights,
                          int64_t num_slots, int rows_per_pass, bf16* act) {
  extern __shared__ __align__(16) uint16_t xs[];  // [rows_per_pass, hidden] bf16 bits
  const int s = find_slot(slot_begin, num_slots, blockIdx.y);
  if (s < 0) return;  // fewer active slots than grid rows: the whole CTA leaves
  const int64_t begin = slot_begin[s], end = slot_begin[s + 1];
  const ExpertWeights wts = slot_weights[s];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kExpertWarps + warp;
  const bool active = o < inter;
  const bf16* gate_row = wts.gate + (active ? o : 0) * hidden;
  const bf16* up_row = wts.up + (active ? o : 0) * hidden;
  const int64_t chunks = hidden / kBf16PerVec;

  for (int64_t r0 = begin; r0 < end; r0 += rows_per_pass) {
    const int nr = static_cast<int>(std::min<int64_t>(rows_per_pass, end - r0));
    __syncthreads();  // the previous pass is done with xs
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
    __syncthreads();
    if (!active) continue;
    float acc_g[kExpertRowsPerPass], acc_u[kExpertRowsPerPass];
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) acc_g[r] = acc_u[r] = 0.0f;
#pragma unroll 4
    for (int64_t c = lane; c < chunks; c += kWarpLanes) {
      const Vec8 g = load_vec8(gate_row + c * kBf16PerVec);
      const Vec8 u = load_vec8(up_row + c * kBf16PerVec);
#pragma unroll
      for (int r = 0; r < kExpertRowsPerPass; ++r) {
        if (r < nr) {
          const Vec8 xv = load_vec8_shared(xs + r * hidden + c * kBf16PerVec);
          acc_g[r] = dot8_bf16(acc_g[r], g.e, xv.e);
          acc_u[r] = dot8_bf16(acc_u[r], u.e, xv.e);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) {
      if (r < nr) {
        const float gs = warp_butterfly(acc_g[r]);
        const float us = warp_butterfly(acc_u[r]);
        if (lane == 0) act[(r0 + r) * inter + o].bits = swiglu_act_bits(gs, us);
      }
    }
  }
}

// out[p, h] = expert_out_value(down_h . act_p) for the pairs p of the CTA's slot.
__global__ void __launch_bounds__(kThreads)
    expert_down_kernel(const bf16* act, int64_t hidden, int64_t inter, const int32_t* slot_begin,
                       const ExpertWeights* slot_weights, int64_t num_slots, int rows_per_pass,
                       float* out) {
  extern __shared__ __align__(16) uint16_t as[];  // [rows_per_pass, inter] bf16 bits
  const int s = find_slot(slot_begin, num_slots, blockIdx.y);
  if (s < 0) return;
  const int64_t begin = slot_begin[s], end = slot_begin[s + 1];
  const ExpertWeights wts = slot_weights[s];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kExpertWarps + warp;
  const bool active = h < hidden;
  const bf16* down_row = wts.down + (active ? h : 0) * inter;
  const int64_t chunks = inter / kBf16PerVec;

  for (int64_t r0 = begin; r0 < end; r0 += rows_per_pass) {
    const int nr = static_cast<int>(std::min<int64_t>(rows_per_pass, end - r0));
    __syncthreads();
    // act rows of the pass are contiguous: pairs r0 .. r0 + nr.
    const uint4* src = reinterpret_cast<const uint4*>(act + r0 * inter);
    uint4* dst = reinterpret_cast<uint4*>(as);
    for (int64_t i = threadIdx.x; i < nr * chunks; i += kThreads) dst[i] = src[i];
    __syncthreads();
    if (!active) continue;
    float acc[kExpertRowsPerPass];
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) acc[r] = 0.0f;
#pragma unroll 4
    for (int64_t c = lane; c < chunks; c += kWarpLanes) {
      const Vec8 d = load_vec8(down_row + c * kBf16PerVec);
#pragma unroll
      for (int r = 0; r < kExpertRowsPerPass; ++r) {
        if (r < nr) {
          const Vec8 av = load_vec8_shared(as + r * inter + c * kBf16PerVec);
          acc[r] = dot8_bf16(acc[r], d.e, av.e);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kExpertRowsPerPass; ++r) {
      if (r < nr) {
        const float sum = warp_butterfly(acc[r]);
        if (lane == 0) out[(r0 + r) * hidden + h] = expert_out_value(sum);
      }
    }
  }
}

// dst [n, width] bf16 row j = bf16(x[row_index[pair[j]]]); pair[j] < 0 gives a zero row.
__global__ void gather_pairs_to_bf16_kernel(const float* x, int64_t width, const int32_t* pair,
                                            const int32_t* row_index, bf16* dst) {
  const int64_t j = blockIdx.x;
  const int32_t p = pair[j];
  bf16* d = dst + j * width;
  if (p < 0) {
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) d[c].bits = 0;
    return;
  }
  const float* src = x + static_cast<int64_t>(row_index[p]) * width;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) store_bf16(d + c, src[c]);
}

}  // namespace

cudaError_t launch_expert_swiglu_small(const float* x, int64_t hidden, int64_t inter,
                                       const int32_t* row_index, const int32_t* slot_begin,
                                       const ExpertWeights* slot_weights, int64_t num_slots,
                                       int64_t max_active_slots, int rows_per_pass, bf16* act,
                                       float* out, cudaStream_t stream) {
  if (num_slots <= 0 || max_active_slots <= 0) return cudaGetLastError();
  if (!expert_small_shape_ok(hidden, inter) || rows_per_pass < 1 ||
      rows_per_pass > kExpertRowsPerPass || max_active_slots > 65535) {
    return cudaErrorInvalidValue;
  }
  const unsigned slots = static_cast<unsigned>(std::min(max_active_slots, num_slots));
  const dim3 grid_gu(static_cast<unsigned>((inter + kExpertWarps - 1) / kExpertWarps), slots);
  const size_t smem_gu = static_cast<size_t>(rows_per_pass) * hidden * sizeof(uint16_t);
  expert_gate_up_kernel<<<grid_gu, kThreads, smem_gu, stream>>>(
      x, hidden, inter, row_index, slot_begin, slot_weights, num_slots, rows_per_pass, act);
  const cudaError_t rc = cudaGetLastError();
  if (rc != cudaSuccess) return rc;
  const dim3 grid_d(static_cast<unsigned>((hidden + kExpertWarps - 1) / kExpertWarps), slots);
  const size_t smem_d = static_cast<size_t>(rows_per_pass) * inter * sizeof(uint16_t);
  expert_down_kernel<<<grid_d, kThreads, smem_d, stream>>>(
      act, hidden, inter, slot_begin, slot_weights, num_slots, rows_per_pass, out);
  return cudaGetLastError();
}

cudaError_t launch_gather_pairs_to_bf16(const float* x, int64_t width, const int32_t* pair,
                                        const int32_t* row_index, int64_t n, bf16* dst,
                                        cudaStream_t stream) {
  if (n > 0 && width > 0) {
    const unsigned threads =
        static_cast<unsigned>(std::clamp<int64_t>((width + 31) / 32 * 32, 32, 256));
    gather_pairs_to_bf16_kernel<<<static_cast<unsigned>(n), threads, 0, stream>>>(x, width, pair,
                                                                                  row_index, dst);
  }
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
