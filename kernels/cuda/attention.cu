// Fused causal GQA attention over the bf16 KV cache (read as fp32) (flash-style online softmax:
// scores exist only in registers, one 32-key tile at a time, never as a T x T matrix in memory),
// the KV append that precedes it and the merge of key splits (flash-decoding). Work items come from
// attention_plan.h. Block: kAttnWarps warps; warp w owns query rows w*kAttnRowsPerWarp + i of
// its item; lane j scores key j of the tile and owns output dims lane + 32 * t.
//
// Shared memory per block (floats): q_s [kAttnBlockRows, D], the item's query rows, then one key
// tile (attention_tile.cuh).
#include <cuda_runtime.h>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/attention_tile.cuh"

namespace moe::kernels::cuda {
namespace {

static_assert(kAttnKeyTile == kAttnTileKeys, "the plan's key tile is the warp's");

__global__ void kv_append_kernel(const float* k, const float* v, int64_t kv_width,
                                 const KvAppendRow* rows, bf16* cache_k, bf16* cache_v) {
  const KvAppendRow r = rows[blockIdx.x];
  append_kv_row(k + static_cast<int64_t>(r.src_row) * kv_width,
                v + static_cast<int64_t>(r.src_row) * kv_width, kv_width,
                cache_k + static_cast<int64_t>(r.dst_row) * kv_width,
                cache_v + static_cast<int64_t>(r.dst_row) * kv_width);
}

template <int DPL>  // output dims per lane: head_dim <= 32 * DPL
__global__ void __launch_bounds__(kAttnWarps * 32)
    attention_kernel(const float* q, const bf16* cache_k, const bf16* cache_v, int H, int KV, int D,
                     float scale, const AttentionWorkItem* items, float* out, float* partial_o,
                     float* partial_ml) {
  extern __shared__ float smem[];
  float* q_s = smem;
  float* k_s = q_s + kAttnBlockRows * D;
  float* v_s = k_s + kAttnTileKeys * (D + 1);
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

  WarpRow<DPL> rows[kAttnRowsPerWarp];
  int pos[kAttnRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kAttnRowsPerWarp; ++i) {
    pos[i] = it.first_pos + (warp * kAttnRowsPerWarp + i) / it.num_heads;
  }

  // One key tile for each of the warp's rows.
  auto attend = [&](int64_t kb, int nk) {
#pragma unroll
    for (int i = 0; i < kAttnRowsPerWarp; ++i) {
      const int r = warp * kAttnRowsPerWarp + i;
      if (r >= num_rows) continue;  // warp-uniform
      attend_tile(q_s + r * D, k_s, v_s, D, nk, lane < nk && attn_key_visible(kb + lane, pos[i]),
                  scale, rows[i]);
    }
  };
  for_each_kv_tile(cache_k, cache_v, it.cache_row0, it.kv_head, D, kv_width, it.key_begin,
                   it.key_end, k_s, v_s, attend);

#pragma unroll
  for (int i = 0; i < kAttnRowsPerWarp; ++i) {
    const int r = warp * kAttnRowsPerWarp + i;
    if (r >= num_rows) continue;
    const int token = r / it.num_heads;
    const int h = it.head_begin + r % it.num_heads;
    if (it.num_splits == 1) {
      store_row(rows[i], D, out + (static_cast<int64_t>(it.row_begin + token) * H + h) * D);
    } else {
      const int64_t slot = static_cast<int64_t>(it.partial_base) +
                           static_cast<int64_t>(token) * it.num_splits + it.split;
      store_partial(rows[i], slot, H, h, D, partial_o, partial_ml);
    }
  }
}

__global__ void attention_combine_kernel(const AttentionCombineRow* rows, int H, int D,
                                         const float* partial_o, const float* partial_ml,
                                         float* out) {
  const AttentionCombineRow cr = rows[blockIdx.x];
  const int h = blockIdx.y;
  combine_splits(partial_o, partial_ml, cr.partial_base, cr.num_splits, H, h, D,
                 out + (static_cast<int64_t>(cr.row) * H + h) * D);
}

template <int DPL>
cudaError_t launch_attention_dpl(const float* q, const bf16* cache_k, const bf16* cache_v,
                                 AttentionShape shape, const AttentionWorkItem* items,
                                 int64_t num_items, float* out, float* partial_o, float* partial_ml,
                                 cudaStream_t stream) {
  const int D = static_cast<int>(shape.head_dim);
  const size_t smem = attention_tile_smem_bytes(kAttnBlockRows, D);
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
