// Two attention kernels beside attention.cu (index math and per-row arithmetic in
// attention_tc_math.h, emulated on the CPU in tests/gpu_host/test_attention_tc.cpp):
//
// 1. Tensor-core prefill (FlashAttention-2 style), head_dim 128, sm_80+: one CTA = one
//    AttentionTcItem = 64 flattened (token, head-in-group) query rows of one sequence and kv head;
//    4 warps of 16 rows each. Per 64-key tile of the bf16 cache: S = bf16(q) K^T on
//    mma.sync.m16n8k16 (fp32 accumulators, scores stay in registers), causal mask by absolute
//    position, online softmax in fp32 (m, l per row), P rounded to bf16 and O += P V on the
//    tensor cores, fp32 accumulation. Rounding: q is rounded to bf16 (nearest even) when the tile
//    is loaded, for the QK^T mma; P = exp(s - m) is rounded to bf16 for the PV mma and l sums the
//    same rounded values; K and V are the bf16 cache itself; every sum is fp32.
//    Shared memory (bf16 bits): q_s, k_s and v_s, each [64][128 + 8] (16 bytes of pad per row
//    make the fragment loads bank-conflict free); 52,224 bytes (opt-in above 48 KiB). The PV B
//    fragment pairs two keys of one dim, so it is built from two 16-bit loads of v_s.
//
// 2. Fixed-grid (graph-safe) decode: seqs in device memory; grid (num_rows, kv heads x head
//    blocks, fixed key splits); a block looks its row up in seqs, exits when its split holds none
//    of the row's keys, else runs the fp32 CUDA-core attention tile of attention.cu over its keys
//    (attention_tile.cuh) and writes a partial (o, m, l); the combine merges the live splits of
//    each row. The KV append reads each row's cache position from seqs too.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/attention_tc_math.h"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/device_math.h"

namespace moe::kernels::cuda {
namespace {

// ---------------------------------------------------------------- tensor-core prefill
constexpr int kTcD = kTcHeadDim;
constexpr int kTcStride = kTcD + kTcSmemPad;  // q_s / k_s / v_s row stride (bf16)
constexpr int kTcKSteps = kTcD / 16;          // k steps of QK^T
constexpr int kTcKeyN = kTcKeyTile / 8;       // n tiles of S
constexpr int kTcDimN = kTcD / 8;             // n tiles of O
constexpr size_t kTcSmemBytes =
    sizeof(uint16_t) * (static_cast<size_t>(kTcBlockRows) + 2 * static_cast<size_t>(kTcKeyTile)) *
    kTcStride;
static_assert((kTcStride * 2) % 16 == 0, "16-byte aligned smem rows");

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4],
                                               const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // built for sm_80+ only (the project's architectures)
#endif
}

__device__ __forceinline__ uint32_t lds32(const uint16_t* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, 1));
  return fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(kFullWarpMask, v, 1);
  return v + __shfl_xor_sync(kFullWarpMask, v, 2);
}

__global__ void __launch_bounds__(kTcWarps * 32)
    attention_tc_kernel(const float* q, const bf16* cache_k, const bf16* cache_v, int H, int KV,
                        float scale, const AttentionTcItem* items, float* out) {
  extern __shared__ __align__(16) uint16_t tc_smem[];
  uint16_t* q_s = tc_smem;
  uint16_t* k_s = q_s + kTcBlockRows * kTcStride;
  uint16_t* v_s = k_s + kTcKeyTile * kTcStride;
  const AttentionTcItem it = items[blockIdx.x];
  const int G = H / KV;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t kv_width = static_cast<int64_t>(KV) * kTcD;

  // q tile -> bf16 (round to nearest even); rows past the sequence are zero.
  for (int idx = threadIdx.x; idx < kTcBlockRows * kTcD; idx += blockDim.x) {
    const int r = idx / kTcD, d = idx % kTcD;
    const TcRow row = tc_row(it, r, G);
    const float x =
        row.valid ? q[(static_cast<int64_t>(it.row_begin + row.token) * H + row.head) * kTcD + d]
                  : 0.0f;
    q_s[r * kTcStride + d] = f32_to_bf16_bits(x);
  }

  // This thread's two rows of the warp's 16: c/d fragment rows (idx >> 1) = 0 and 1.
  TcRow rows[2];
  int warp_last_pos = -1;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    rows[half] = tc_row(it, warp * kTcWarpRows + mma_c_row(lane, 2 * half), G);
    if (rows[half].valid) warp_last_pos = max(warp_last_pos, rows[half].pos);
  }
  for (int o = 16; o > 0; o >>= 1) {
    warp_last_pos = max(warp_last_pos, __shfl_xor_sync(kFullWarpMask, warp_last_pos, o));
  }

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float acc[kTcDimN][4];
#pragma unroll
  for (int n = 0; n < kTcDimN; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.0f;
  }

  __syncthreads();  // q_s complete
  uint32_t qa[kTcKSteps][4];
#pragma unroll
  for (int kk = 0; kk < kTcKSteps; ++kk) {
#pragma unroll
    for (int reg = 0; reg < 4; ++reg) {
      const int r = warp * kTcWarpRows + mma_a_row(lane, reg);
      qa[kk][reg] = lds32(q_s + r * kTcStride + 16 * kk + mma_a_col(lane, reg, 0));
    }
  }

  const bf16* k_base = cache_k + static_cast<int64_t>(it.cache_row0) * kv_width +
                       static_cast<int64_t>(it.kv_head) * kTcD;
  const bf16* v_base = cache_v + static_cast<int64_t>(it.cache_row0) * kv_width +
                       static_cast<int64_t>(it.kv_head) * kTcD;
  for (int kb = 0; kb < it.key_end; kb += kTcKeyTile) {
    __syncthreads();  // every warp is done with the previous tile
    // 16-byte loads (8 bf16); keys at or past key_end are zero (the cache there may hold
    // anything, NaN included, and 0 * NaN would poison P V).
    for (int idx = threadIdx.x; idx < kTcKeyTile * (kTcD / 8); idx += blockDim.x) {
      const int j = idx / (kTcD / 8), c = (idx % (kTcD / 8)) * 8;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (kb + j < it.key_end) {
        const int64_t off = static_cast<int64_t>(kb + j) * kv_width + c;
        kv = *reinterpret_cast<const uint4*>(k_base + off);
        vv = *reinterpret_cast<const uint4*>(v_base + off);
      }
      *reinterpret_cast<uint4*>(k_s + j * kTcStride + c) = kv;
      *reinterpret_cast<uint4*>(v_s + j * kTcStride + c) = vv;
    }
    __syncthreads();
    if (kb > warp_last_pos) continue;  // warp-uniform: every key of the tile is in the future

    // S = q K^T for the warp's 16 rows x 64 keys.
    float s[kTcKeyN][4];
#pragma unroll
    for (int n = 0; n < kTcKeyN; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s[n][i] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kTcKSteps; ++kk) {
        uint32_t b[2];
#pragma unroll
        for (int reg = 0; reg < 2; ++reg) {
          b[reg] =
              lds32(k_s + (8 * n + mma_b_n(lane)) * kTcStride + 16 * kk + mma_b_k(lane, reg, 0));
        }
        mma_bf16_16816(s[n], qa[kk], b);
      }
    }

    // Mask, scale, tile max per row (a row's 64 scores sit in the 4 lanes of a quad).
    float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kTcKeyN; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int half = i >> 1;
        const int key = kb + 8 * n + mma_c_col(lane, i);
        const bool keep =
            rows[half].valid && key < it.key_end && attn_key_visible(key, rows[half].pos);
        s[n][i] = keep ? s[n][i] * scale : -INFINITY;
        tmax[half] = fmaxf(tmax[half], s[n][i]);
      }
    }
    float corr[2], psum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const SoftmaxTileStep st = softmax_tile_step(m[half], quad_max(tmax[half]));
      m[half] = st.m_new;
      corr[half] = st.corr;
    }
#pragma unroll
    for (int n = 0; n < kTcKeyN; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[n][i] = tc_prob(s[n][i], m[i >> 1]);
        psum[i >> 1] += s[n][i];
      }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) l[half] = l[half] * corr[half] + quad_sum(psum[half]);
#pragma unroll
    for (int n = 0; n < kTcDimN; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[n][i] *= corr[i >> 1];
    }

    // O += P V: the S accumulators of key n-tiles 2kk and 2kk + 1 are exactly the A fragment of
    // k step kk (keys 16kk .. 16kk + 15).
#pragma unroll
    for (int kk = 0; kk < kTcKeyTile / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int n = 0; n < kTcDimN; ++n) {
        uint32_t b[2];
        const int dim = 8 * n + mma_b_n(lane);
#pragma unroll
        for (int reg = 0; reg < 2; ++reg) {
          const uint32_t lo = v_s[(16 * kk + mma_b_k(lane, reg, 0)) * kTcStride + dim];
          const uint32_t hi = v_s[(16 * kk + mma_b_k(lane, reg, 1)) * kTcStride + dim];
          b[reg] = lo | (hi << 16);
        }
        mma_bf16_16816(acc[n], a, b);
      }
    }
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!rows[half].valid) continue;
    const float inv_l = attn_inv_l(l[half]);
    float* dst =
        out + (static_cast<int64_t>(it.row_begin + rows[half].token) * H + rows[half].head) * kTcD;
#pragma unroll
    for (int n = 0; n < kTcDimN; ++n) {
      const int d = 8 * n + mma_c_col(lane, 2 * half);
      dst[d] = acc[n][2 * half] * inv_l;
      dst[d + 1] = acc[n][2 * half + 1] * inv_l;
    }
  }
}

// ---------------------------------------------------------------- fixed-grid decode
static_assert(kFixedKeyTile == kAttnTileKeys, "the fixed-grid key tile is the warp's");

struct FixedGridArgs {
  const AttentionSeq* seqs;
  int64_t num_seqs;
  int64_t num_slots;
  int64_t max_len;
  int64_t num_splits;
  int64_t chunk;
};

__global__ void kv_append_fixed_grid_kernel(const float* k, const float* v, int64_t kv_width,
                                            FixedGridArgs a, bf16* cache_k, bf16* cache_v) {
  const FixedGridRow rr = fixed_grid_row(a.seqs, a.num_seqs, blockIdx.x, a.num_slots, a.max_len);
  if (!rr.valid) return;
  const float* ks = k + static_cast<int64_t>(blockIdx.x) * kv_width;
  const float* vs = v + static_cast<int64_t>(blockIdx.x) * kv_width;
  append_kv_row(ks, vs, kv_width, cache_k + (rr.cache_row + rr.pos) * kv_width,
                cache_v + (rr.cache_row + rr.pos) * kv_width);
}

// Block (row, kv head * head_blocks + head block, split). Warp w owns the block's query heads
// w * kFixedHeadsPerWarp + j; lane j scores key j of a tile and owns output dims lane + 32 t.
template <int DPL>
__global__ void __launch_bounds__(kFixedWarps * 32)
    attention_fixed_grid_kernel(const float* q, const bf16* cache_k, const bf16* cache_v, int H,
                                int KV, int D, float scale, FixedGridArgs a, float* partial_o,
                                float* partial_ml) {
  extern __shared__ float res_smem[];
  const int64_t row = blockIdx.x;
  const int64_t sp = blockIdx.z;
  const FixedGridRow rr = fixed_grid_row(a.seqs, a.num_seqs, row, a.num_slots, a.max_len);
  if (!rr.valid || sp >= fixed_grid_live_splits(rr.pos, a.chunk)) return;  // block-uniform
  int64_t key_begin = 0, key_end = 0;
  fixed_grid_split_keys(rr.pos, a.chunk, sp, &key_begin, &key_end);

  const int G = H / KV;
  const int head_blocks = (G + kFixedHeadsPerBlock - 1) / kFixedHeadsPerBlock;
  const int g = blockIdx.y / head_blocks, hb = blockIdx.y % head_blocks;
  const int h0 = g * G + hb * kFixedHeadsPerBlock;
  const int nh = min(kFixedHeadsPerBlock, G - hb * kFixedHeadsPerBlock);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t kv_width = static_cast<int64_t>(KV) * D;

  float* q_s = res_smem;
  float* k_s = q_s + kFixedHeadsPerBlock * D;
  float* v_s = k_s + kAttnTileKeys * (D + 1);
  for (int idx = threadIdx.x; idx < nh * D; idx += blockDim.x) {
    const int i = idx / D, d = idx % D;
    q_s[idx] = q[(row * H + h0 + i) * D + d];
  }

  WarpRow<DPL> rows[kFixedHeadsPerWarp];
  // One key tile for each of the warp's heads.
  auto attend = [&](int64_t kb, int nk) {
#pragma unroll
    for (int j = 0; j < kFixedHeadsPerWarp; ++j) {
      const int i = warp * kFixedHeadsPerWarp + j;
      if (i >= nh) continue;  // warp-uniform
      attend_tile(q_s + i * D, k_s, v_s, D, nk, lane < nk && attn_key_visible(kb + lane, rr.pos),
                  scale, rows[j]);
    }
  };
  for_each_kv_tile(cache_k, cache_v, rr.cache_row, g, D, kv_width, key_begin, key_end, k_s, v_s,
                   attend);

  const int64_t slot = fixed_grid_partial_slot(row, sp, a.num_splits);
#pragma unroll
  for (int j = 0; j < kFixedHeadsPerWarp; ++j) {
    const int i = warp * kFixedHeadsPerWarp + j;
    if (i >= nh) continue;
    store_partial(rows[j], slot, H, h0 + i, D, partial_o, partial_ml);
  }
}

// Block (row, head): merges the row's live splits (the others were never written).
__global__ void attention_fixed_grid_combine_kernel(int H, int D, FixedGridArgs a,
                                                    const float* partial_o, const float* partial_ml,
                                                    float* out) {
  const int64_t row = blockIdx.x;
  const int h = blockIdx.y;
  float* dst = out + (row * H + h) * D;
  const FixedGridRow rr = fixed_grid_row(a.seqs, a.num_seqs, row, a.num_slots, a.max_len);
  if (!rr.valid) {
    for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = 0.0f;
    return;
  }
  int64_t live = fixed_grid_live_splits(rr.pos, a.chunk);
  if (live > a.num_splits) live = a.num_splits;
  combine_splits(partial_o, partial_ml, fixed_grid_partial_slot(row, 0, a.num_splits), live, H, h,
                 D, dst);
}

template <int DPL>
cudaError_t launch_fixed_grid_dpl(const float* q, const bf16* cache_k, const bf16* cache_v,
                                  AttentionShape shape, const FixedGridArgs& a, int64_t num_rows,
                                  float* partial_o, float* partial_ml, cudaStream_t stream) {
  const int D = static_cast<int>(shape.head_dim);
  const size_t smem = attention_tile_smem_bytes(kFixedHeadsPerBlock, D);
  if (smem > 48 * 1024) {
    const cudaError_t rc =
        cudaFuncSetAttribute(attention_fixed_grid_kernel<DPL>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (rc != cudaSuccess) return rc;
  }
  const int64_t G = shape.num_heads / shape.num_kv_heads;
  const int64_t head_blocks = (G + kFixedHeadsPerBlock - 1) / kFixedHeadsPerBlock;
  const dim3 grid(static_cast<unsigned>(num_rows),
                  static_cast<unsigned>(shape.num_kv_heads * head_blocks),
                  static_cast<unsigned>(a.num_splits));
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
  attention_fixed_grid_kernel<DPL><<<grid, kFixedWarps * 32, smem, stream>>>(
      q, cache_k, cache_v, static_cast<int>(shape.num_heads), static_cast<int>(shape.num_kv_heads),
      D, scale, a, partial_o, partial_ml);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attention_tc(const float* q, const bf16* cache_k, const bf16* cache_v,
                                AttentionShape shape, const AttentionTcItem* items,
                                int64_t num_items, float* out, cudaStream_t stream) {
  if (num_items <= 0) return cudaGetLastError();
  if (shape.head_dim != kTcHeadDim || shape.num_kv_heads <= 0 ||
      shape.num_heads % shape.num_kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  if (reinterpret_cast<uintptr_t>(cache_k) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(cache_v) % 16 != 0) {
    return cudaErrorMisalignedAddress;
  }
  // Opt in to more than 48 KiB of dynamic shared memory; idempotent and cheap.
  const cudaError_t rc =
      cudaFuncSetAttribute(attention_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kTcSmemBytes));
  if (rc != cudaSuccess) return rc;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(kTcHeadDim)));
  attention_tc_kernel<<<static_cast<unsigned>(num_items), kTcWarps * 32, kTcSmemBytes, stream>>>(
      q, cache_k, cache_v, static_cast<int>(shape.num_heads), static_cast<int>(shape.num_kv_heads),
      scale, items, out);
  return cudaGetLastError();
}

cudaError_t launch_kv_append_fixed_grid(const float* k, const float* v, int64_t kv_width,
                                        const AttentionSeq* seqs, int64_t num_seqs,
                                        int64_t num_rows, int64_t num_slots, int64_t max_len,
                                        bf16* cache_k, bf16* cache_v, cudaStream_t stream) {
  if (num_rows > 0 && kv_width > 0) {
    const FixedGridArgs a{seqs, num_seqs, num_slots, max_len, 1, max_len};
    const unsigned threads =
        static_cast<unsigned>(kv_width >= 256 ? 256 : (kv_width + 31) / 32 * 32);
    kv_append_fixed_grid_kernel<<<static_cast<unsigned>(num_rows), threads, 0, stream>>>(
        k, v, kv_width, a, cache_k, cache_v);
  }
  return cudaGetLastError();
}

cudaError_t launch_attention_fixed_grid(const float* q, const bf16* cache_k, const bf16* cache_v,
                                        AttentionShape shape, const AttentionSeq* seqs,
                                        int64_t num_seqs, int64_t num_rows, int64_t num_slots,
                                        int64_t max_len, FixedGridSplits splits, float* partial_o,
                                        float* partial_ml, float* out, cudaStream_t stream) {
  if (num_rows <= 0) return cudaGetLastError();
  const int64_t D = shape.head_dim;
  if (D <= 0 || D > kFixedMaxHeadDim || shape.num_kv_heads <= 0 ||
      shape.num_heads % shape.num_kv_heads != 0 || splits.num_splits < 1 || splits.chunk < 1) {
    return cudaErrorInvalidValue;
  }
  const FixedGridArgs a{seqs, num_seqs, num_slots, max_len, splits.num_splits, splits.chunk};
  cudaError_t rc = cudaSuccess;
  if (D <= 32) {
    rc = launch_fixed_grid_dpl<1>(q, cache_k, cache_v, shape, a, num_rows, partial_o, partial_ml,
                                  stream);
  } else if (D <= 64) {
    rc = launch_fixed_grid_dpl<2>(q, cache_k, cache_v, shape, a, num_rows, partial_o, partial_ml,
                                  stream);
  } else if (D <= 128) {
    rc = launch_fixed_grid_dpl<4>(q, cache_k, cache_v, shape, a, num_rows, partial_o, partial_ml,
                                  stream);
  } else {
    rc = launch_fixed_grid_dpl<8>(q, cache_k, cache_v, shape, a, num_rows, partial_o, partial_ml,
                                  stream);
  }
  if (rc != cudaSuccess) return rc;
  const unsigned threads = static_cast<unsigned>(D >= 256 ? 256 : (D + 31) / 32 * 32);
  const dim3 grid(static_cast<unsigned>(num_rows), static_cast<unsigned>(shape.num_heads));
  attention_fixed_grid_combine_kernel<<<grid, threads, 0, stream>>>(
      static_cast<int>(shape.num_heads), static_cast<int>(D), a, partial_o, partial_ml, out);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
