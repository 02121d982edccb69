// The fp32 CUDA-core attention tile, written once for the kernels that run it: the host-planned
// kernel of attention.cu and the fixed-grid (graph-safe) decode of attention_tc.cu. Device code
// only (nvcc); the per-row arithmetic comes from attention_math.h, which tests/gpu_host runs on
// the CPU.
//
// Layout: one warp runs one query row at a time over a tile of up to kAttnTileKeys keys held in
// shared memory as fp32 (k_s rows padded to D + 1 floats so that lane j reads row j bank-conflict
// free, v_s rows of D); lane j scores key j, lane l owns output dims l + 32 t (t < DPL).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/attention_math.h"
#include "kernels/cuda/device_math.h"

namespace moe::kernels::cuda {

inline constexpr unsigned kFullWarpMask = 0xffffffffu;
inline constexpr int kAttnTileKeys = 32;  // one key per lane

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullWarpMask, v, o);
  return v;
}

// Shared memory of a block with `rows` query rows: q_s [rows, D], k_s [tile, D + 1], v_s [tile, D].
inline size_t attention_tile_smem_bytes(int rows, int D) {
  return sizeof(float) *
         (static_cast<size_t>(rows) * D + static_cast<size_t>(kAttnTileKeys) * (D + 1) +
          static_cast<size_t>(kAttnTileKeys) * D);
}

// One query row's state in a warp: running max m and sum l, and this lane's output dims.
template <int DPL>
struct WarpRow {
  float m = -INFINITY;
  float l = 0.0f;
  float o[DPL] = {};
};

// Block-wide: new k and v rows (kv_width floats) rounded to bf16 into the cache rows kd and vd;
// every later read converts back exactly.
__device__ __forceinline__ void append_kv_row(const float* ks, const float* vs, int64_t kv_width,
                                              bf16* kd, bf16* vd) {
  for (int64_t c = threadIdx.x; c < kv_width; c += blockDim.x) {
    store_bf16(kd + c, ks[c]);
    store_bf16(vd + c, vs[c]);
  }
}

// Block-wide: keys [kb, kb + nk) of one kv head (k_base, v_base: its position 0, rows
// kv_width apart) from the bf16 cache into k_s and v_s.
__device__ __forceinline__ void load_kv_tile(const bf16* k_base, const bf16* v_base,
                                             int64_t kv_width, int64_t kb, int nk, int D,
                                             float* k_s, float* v_s) {
  for (int idx = threadIdx.x; idx < nk * D; idx += blockDim.x) {
    const int j = idx / D, d = idx - j * D;
    const int64_t off = (kb + j) * kv_width + d;
    k_s[j * (D + 1) + d] = load_bf16(k_base + off);
    v_s[j * D + d] = load_bf16(v_base + off);
  }
}

// Block-wide: the keys [key_begin, key_end) of kv head `kv_head` of the sequence whose position 0
// is cache row cache_row0, one tile at a time: each tile is loaded into k_s and v_s, then
// attend(kb, nk) runs (keys kb .. kb + nk) once every thread sees it. The first barrier also
// publishes whatever the block wrote to shared memory before (its query rows).
template <class Attend>
__device__ __forceinline__ void for_each_kv_tile(const bf16* cache_k, const bf16* cache_v,
                                                 int64_t cache_row0, int kv_head, int D,
                                                 int64_t kv_width, int64_t key_begin,
                                                 int64_t key_end, float* k_s, float* v_s,
                                                 Attend attend) {
  const int64_t head0 = cache_row0 * kv_width + static_cast<int64_t>(kv_head) * D;
  for (int64_t kb = key_begin; kb < key_end; kb += kAttnTileKeys) {
    const int nk = static_cast<int>(min(static_cast<int64_t>(kAttnTileKeys), key_end - kb));
    __syncthreads();  // every warp is done with the previous tile
    load_kv_tile(cache_k + head0, cache_v + head0, kv_width, kb, nk, D, k_s, v_s);
    __syncthreads();
    attend(kb, nk);
  }
}

// Warp-wide: row r (query q_row in shared memory) over the loaded tile of nk keys. `visible`:
// this lane's key exists (lane < nk) and the causal rule lets the row see it.
template <int DPL>
__device__ __forceinline__ void attend_tile(const float* q_row, const float* k_s, const float* v_s,
                                            int D, int nk, bool visible, float scale,
                                            WarpRow<DPL>& r) {
  const int lane = threadIdx.x & 31;
  float s = -INFINITY;
  if (visible) {
    const float* kr = k_s + lane * (D + 1);
    float dot = 0.0f;
    for (int d = 0; d < D; ++d) dot += q_row[d] * kr[d];
    s = dot * scale;
  }
  const float tile_max = warp_max(s);
  if (tile_max == -INFINITY) return;  // every key of the tile is masked for this row
  const SoftmaxTileStep st = softmax_tile_step(r.m, tile_max);
  const float p = softmax_weight(s, st.m_new);
  r.l = r.l * st.corr + warp_sum(p);
#pragma unroll
  for (int t = 0; t < DPL; ++t) r.o[t] *= st.corr;
  for (int j = 0; j < nk; ++j) {
    const float pj = __shfl_sync(kFullWarpMask, p, j);
#pragma unroll
    for (int t = 0; t < DPL; ++t) {
      const int d = lane + 32 * t;
      if (d < D) r.o[t] += pj * v_s[j * D + d];
    }
  }
  r.m = st.m_new;
}

// Warp-wide: the row's output o / l into dst (D floats).
template <int DPL>
__device__ __forceinline__ void store_row(const WarpRow<DPL>& r, int D, float* dst) {
  const int lane = threadIdx.x & 31;
  const float inv_l = attn_inv_l(r.l);
#pragma unroll
  for (int t = 0; t < DPL; ++t) {
    const int d = lane + 32 * t;
    if (d < D) dst[d] = r.o[t] * inv_l;
  }
}

// Warp-wide: the row's unnormalised o and its (m, l) as partial `slot` of head h (layout of
// attention_math.h's merge).
template <int DPL>
__device__ __forceinline__ void store_partial(const WarpRow<DPL>& r, int64_t slot, int H, int h,
                                              int D, float* partial_o, float* partial_ml) {
  const int lane = threadIdx.x & 31;
  float* dst = partial_o + (slot * H + h) * D;
#pragma unroll
  for (int t = 0; t < DPL; ++t) {
    const int d = lane + 32 * t;
    if (d < D) dst[d] = r.o[t];
  }
  if (lane == 0) {
    partial_ml[(slot * H + h) * 2] = r.m;
    partial_ml[(slot * H + h) * 2 + 1] = r.l;
  }
}

// Block-wide: output row dst (D floats) of head h merged from its n splits at slots slot0.. .
__device__ __forceinline__ void combine_splits(const float* partial_o, const float* partial_ml,
                                               int64_t slot0, int64_t n, int H, int h, int D,
                                               float* dst) {
  const MergedSplits merged = merge_splits(partial_ml, slot0, n, H, h);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    dst[d] = merged_output(partial_o, partial_ml, slot0, n, H, h, D, d, merged);
  }
}

}  // namespace moe::kernels::cuda
