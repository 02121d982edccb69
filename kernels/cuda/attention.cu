// Fused causal GQA attention over the bf16 KV cache (read as fp32) (flash-style online softmax:
// scores exist only in registers, one 32-key tile at a time, never as a T x T matrix in memory),
// the KV append that precedes it and the merge of key splits (flash-decoding). Work items come from
// attention_plan.h. Block: kAttnWarps warps; warp w owns query rows w*kAttnRowsPerWarp + i of
// its item; lane j scores key j of the tile and owns output dims lane + 32 * t.
//
// Shared memory per block (floats):
//   q_s [kAttnBlockRows, D]   the item's query rows
//   k_s [kAttnKeyTile, D + 1] one key tile (row padded by 1: lane j reads row j bank-conflict free)
//   v_s [kAttnKeyTile, D]     the matching values
#include <cuda_runtime.h>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/device_math.h"

namespace moe::kernels::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// New k/v rows are rounded to bf16 here, once; every later read converts back exactly.
__global__ void kv_append_kernel(const float* k, const float* v, int64_t kv_width,
                                 const KvAppendRow* rows, bf16* cache_k, bf16* cache_v) {
  const KvAppendRow r = rows[blockIdx.x];
  const float* ks = k + static_cast<int64_t>(r.src_row) * kv_width;
  const float* vs = v + static_cast<int64_t>(r.src_row) * kv_width;
  bf16* kd = cache_k + static_cast<int64_t>(r.dst_row) * kv_width;
  bf16* vd = cache_v + static_cast<int64_t>(r.dst_row) * kv_width;
  for (int64_t c = threadIdx.x; c < kv_width; c += blockDim.x) {
    store_bf16(kd + c, ks[c]);
    store_bf16(vd + c, vs[c]);
  }
}

size_t attention_smem_bytes(int D) {
  return sizeof(float) *
         (static_cast<size_t>(kAttnBlockRows) * D + static_cast<size_t>(kAttnKeyTile) * (D + 1) +
          static_cast<size_t>(kAttnKeyTile) * D);
}

template <int DPL>  // output dims per lane: head_dim <= 32 * DPL
__global__ void __launch_bounds__(kAttnWarps * 32)
    attention_kernel(const float* q, const bf16* cache_k, const bf16* cache_v, int H, int KV, int D,
                     float scale, const AttentionWorkItem* items, float* out, float* partial_o,
                     float* partial_ml) {
  extern __shared__ float smem[];
  float* q_s = smem;
  float* k_s = q_s + kAttnBlockRows * D;
  float* v_s = k_s + kAttnKeyTile * (D + 1);
  const AttentionWorkItem it = items[blockIdx.x];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int num_rows = it.num_tokens * it.num_heads;
  const int64_t kv_width = static_cast<int64_t>(KV) * D;

  for (int idx = threadIdx.x; idx < num_rows * D; idx += blockDim.x) {
    const int r = idx / D, d = idx - (idx / D) * D;
    const int64_t qrow = it.row_begin + r / it.num_heads;
    const int h = it.head_begin + r % it.num_heads;
    q_s[idx] = q[(qrow * H + h) * D + d];
  }

  float m[kAttnRowsPerWarp], l[kAttnRowsPerWarp], o[kAttnRowsPerWarp][DPL];
  int pos[kAttnRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kAttnRowsPerWarp; ++i) {
    const int r = warp * kAttnRowsPerWarp + i;
    pos[i] = it.first_pos + r / it.num_heads;
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int t = 0; t < DPL; ++t) o[i][t] = 0.0f;
  }

  const bf16* k_base = cache_k + static_cast<int64_t>(it.cache_row0) * kv_width +
                       static_cast<int64_t>(it.kv_head) * D;
  const bf16* v_base = cache_v + static_cast<int64_t>(it.cache_row0) * kv_width +
                       static_cast<int64_t>(it.kv_head) * D;
  for (int kb = it.key_begin; kb < it.key_end; kb += kAttnKeyTile) {
    const int nk = min(kAttnKeyTile, it.key_end - kb);
    __syncthreads();  // previous tile consumed; on the first pass: q_s complete
    for (int idx = threadIdx.x; idx < nk * D; idx += blockDim.x) {
      const int j = idx / D, d = idx - (idx / D) * D;
      const int64_t off = static_cast<int64_t>(kb + j) * kv_width + d;
      k_s[j * (D + 1) + d] = load_bf16(k_base + off);
      v_s[j * D + d] = load_bf16(v_base + off);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kAttnRowsPerWarp; ++i) {
      const int r = warp * kAttnRowsPerWarp + i;
      if (r >= num_rows) continue;  // warp-uniform
      float s = -INFINITY;
      if (lane < nk && kb + lane <= pos[i]) {
        const float* qr = q_s + r * D;
        const float* kr = k_s + lane * (D + 1);
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
        s = dot * scale;
      }
      const float tile_max = warp_max(s);
      if (tile_max == -INFINITY) continue;  // every key of the tile is in this row's future
      const float m_new = fmaxf(m[i], tile_max);
      const float corr = softmax_rescale(m[i], m_new);
      const float p = softmax_weight(s, m_new);
      l[i] = l[i] * corr + warp_sum(p);
#pragma unroll
      for (int t = 0; t < DPL; ++t) o[i][t] *= corr;
      for (int j = 0; j < nk; ++j) {
        const float pj = __shfl_sync(kFullMask, p, j);
#pragma unroll
        for (int t = 0; t < DPL; ++t) {
          const int d = lane + 32 * t;
          if (d < D) o[i][t] += pj * v_s[j * D + d];
        }
      }
      m[i] = m_new;
    }
  }

#pragma unroll
  for (int i = 0; i < kAttnRowsPerWarp; ++i) {
    const int r = warp * kAttnRowsPerWarp + i;
    if (r >= num_rows) continue;
    const int token = r / it.num_heads;
    const int h = it.head_begin + r % it.num_heads;
    if (it.num_splits == 1) {
      const float inv_l = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
      float* dst = out + (static_cast<int64_t>(it.row_begin + token) * H + h) * D;
#pragma unroll
      for (int t = 0; t < DPL; ++t) {
        const int d = lane + 32 * t;
        if (d < D) dst[d] = o[i][t] * inv_l;
      }
    } else {
      const int64_t slot = static_cast<int64_t>(it.partial_base) +
                           static_cast<int64_t>(token) * it.num_splits + it.split;
      float* dst = partial_o + (slot * H + h) * D;
#pragma unroll
      for (int t = 0; t < DPL; ++t) {
        const int d = lane + 32 * t;
        if (d < D) dst[d] = o[i][t];
      }
      if (lane == 0) {
        partial_ml[(slot * H + h) * 2] = m[i];
        partial_ml[(slot * H + h) * 2 + 1] = l[i];
      }
    }
  }
}

__global__ void attention_combine_kernel(const AttentionCombineRow* rows, int H, int D,
                                         const float* partial_o, const float* partial_ml,
                                         float* out) {
  const AttentionCombineRow cr = rows[blockIdx.x];
  const int h = blockIdx.y;
  float m_merged = -INFINITY;
  for (int s = 0; s < cr.num_splits; ++s) {
    const int64_t at = (static_cast<int64_t>(cr.partial_base + s) * H + h) * 2;
    if (partial_ml[at + 1] > 0.0f) m_merged = fmaxf(m_merged, partial_ml[at]);
  }
  float l_merged = 0.0f;
  for (int s = 0; s < cr.num_splits; ++s) {
    const int64_t at = (static_cast<int64_t>(cr.partial_base + s) * H + h) * 2;
    const SoftmaxPartial p{partial_ml[at], partial_ml[at + 1]};
    l_merged += p.l * partial_scale(p, m_merged);
  }
  const float inv_l = l_merged > 0.0f ? 1.0f / l_merged : 0.0f;
  float* dst = out + (static_cast<int64_t>(cr.row) * H + h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < cr.num_splits; ++s) {
      const int64_t slot = cr.partial_base + s;
      const SoftmaxPartial p{partial_ml[(slot * H + h) * 2], partial_ml[(slot * H + h) * 2 + 1]};
      acc += partial_o[(slot * H + h) * D + d] * partial_scale(p, m_merged);
    }
    dst[d] = acc * inv_l;
  }
}

template <int DPL>
cudaError_t launch_attention_dpl(const float* q, const bf16* cache_k, const bf16* cache_v,
                                 AttentionShape shape, const AttentionWorkItem* items,
                                 int64_t num_items, float* out, float* partial_o, float* partial_ml,
                                 cudaStream_t stream) {
  const int D = static_cast<int>(shape.head_dim);
  const size_t smem = attention_smem_bytes(D);
  if (smem > 48 * 1024) {
    // Opt in to large dynamic shared memory (head_dim > 128); idempotent and cheap.
    const cudaError_t rc = cudaFuncSetAttribute(
        attention_kernel<DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (rc != cudaSuccess) return rc;
  }
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
  attention_kernel<DPL><<<static_cast<unsigned>(num_items), kAttnWarps * 32, smem, stream>>>(
      q, cache_k, cache_v, static_cast<int>(shape.num_heads), static_cast<int>(shape.num_kv_heads),
      D, scale, items, out, partial_o, partial_ml);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_kv_append(const float* k, const float* v, int64_t kv_width,
                             const KvAppendRow* rows, int64_t n, bf16* cache_k, bf16* cache_v,
                             cudaStream_t stream) {
  if (n > 0 && kv_width > 0) {
    const unsigned threads =
        static_cast<unsigned>(kv_width >= 256 ? 256 : (kv_width + 31) / 32 * 32);
    kv_append_kernel<<<static_cast<unsigned>(n), threads, 0, stream>>>(k, v, kv_width, rows,
                                                                       cache_k, cache_v);
  }
  return cudaGetLastError();
}

cudaError_t launch_attention(const float* q, const bf16* cache_k, const bf16* cache_v,
                             AttentionShape shape, const AttentionWorkItem* items,
                             int64_t num_items, float* out, float* partial_o, float* partial_ml,
                             cudaStream_t stream) {
  if (num_items <= 0) return cudaGetLastError();
  const int64_t D = shape.head_dim;
  if (D <= 0 || D > kAttnMaxHeadDim) return cudaErrorInvalidValue;
  if (D <= 32) {
    return launch_attention_dpl<1>(q, cache_k, cache_v, shape, items, num_items, out, partial_o,
                                   partial_ml, stream);
  }
  if (D <= 64) {
    return launch_attention_dpl<2>(q, cache_k, cache_v, shape, items, num_items, out, partial_o,
                                   partial_ml, stream);
  }
  if (D <= 128) {
    return launch_attention_dpl<4>(q, cache_k, cache_v, shape, items, num_items, out, partial_o,
                                   partial_ml, stream);
  }
  return launch_attention_dpl<8>(q, cache_k, cache_v, shape, items, num_items, out, partial_o,
                                 partial_ml, stream);
}

cudaError_t launch_attention_combine(const AttentionCombineRow* rows, int64_t n,
                                     AttentionShape shape, const float* partial_o,
                                     const float* partial_ml, float* out, cudaStream_t stream) {
  if (n <= 0) return cudaGetLastError();
  const int D = static_cast<int>(shape.head_dim);
  const unsigned threads = static_cast<unsigned>(D >= 256 ? 256 : (D + 31) / 32 * 32);
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(shape.num_heads));
  attention_combine_kernel<<<grid, threads, 0, stream>>>(rows, static_cast<int>(shape.num_heads), D,
                                                         partial_o, partial_ml, out);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
