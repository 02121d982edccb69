// Fused kernels of the attention block: RMSNorm with an optional residual add before it and an
// optional bf16 copy of its output (the next GEMM's operand), per-head q/k RMSNorm + RoPE in one
// pass, and the split of a stacked q|k|v GEMM output. Per-thread math: fused_math.h.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/fused_math.h"

namespace moe::kernels::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_butterfly(float v) {
  for (int o = kWarpLanes / 2; o > 0; o >>= 1) v = add_rn(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// One block per row, norm_row_threads(dim) threads. Sum of squares: each thread's fma chain
// (sumsq_partial), a butterfly per warp, then the warp sums added in warp order starting from 0
// (elementwise.cu's block_sum). Each thread rewrites only the elements it read, so x and y may
// alias; with delta, x is updated in place first (x += delta, as add_inplace).
__global__ void norm_rows_kernel(float* x_io, const float* x_in, const float* delta, const bf16* w,
                                 int64_t dim, float eps, float* y, bf16* y_bf16) {
  __shared__ float warp_sums[32];
  const int64_t row = blockIdx.x;
  const int t = threadIdx.x, threads = blockDim.x;
  const float* xr = (delta != nullptr ? x_io : x_in) + row * dim;
  if (delta != nullptr) {
    float* xw = x_io + row * dim;
    const float* dr = delta + row * dim;
    for (int64_t c = t; c < dim; c += threads) xw[c] = add_rn(xw[c], dr[c]);
  }
  float s = sumsq_partial(xr, dim, t, threads);
  s = warp_butterfly(s);
  if ((t & 31) == 0) warp_sums[t >> 5] = s;
  __syncthreads();
  float total = 0.0f;
  for (int wi = 0; wi < threads / kWarpLanes; ++wi) total = add_rn(total, warp_sums[wi]);
  const float inv_rms = rms_inverse(total, dim, eps);
  float* yr = y + row * dim;
  bf16* yb = y_bf16 != nullptr ? y_bf16 + row * dim : nullptr;
  for (int64_t c = t; c < dim; c += threads) {
    const float v = norm_scale(xr[c], inv_rms, load_bf16(w + c));
    yr[c] = v;
    if (yb != nullptr) store_bf16(yb + c, v);
  }
}

// One warp per (row, head) over the q heads then the k heads of each row. Lane l holds elements
// l + 32 j (NJ = head_dim / 32 of them). Sum of squares: per j a butterfly of x^2, the NJ sums
// added in j order from 0 (elementwise.cu's rmsnorm of a head_dim row, one thread per element);
// then norm_scale and rope_pair on (j, j + NJ / 2), all in registers.
template <int NJ>
__global__ void qk_norm_rope_kernel(float* q, float* k, const bf16* q_w, const bf16* k_w,
                                    const int32_t* positions, const float* inv_freq, int64_t rows,
                                    int64_t heads, int64_t kv_heads, float eps) {
  constexpr int kHeadDim = NJ * kWarpLanes;
  const int lane = threadIdx.x & 31;
  const int64_t unit = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int64_t per_row = heads + kv_heads;
  if (unit >= rows * per_row) return;  // whole warps exit together
  const int64_t row = unit / per_row, h = unit % per_row;
  const bool is_q = h < heads;
  float* v =
      is_q ? q + (row * heads + h) * kHeadDim : k + (row * kv_heads + (h - heads)) * kHeadDim;
  const bf16* w = is_q ? q_w : k_w;
  float x[NJ];
#pragma unroll
  for (int j = 0; j < NJ; ++j) x[j] = v[lane + kWarpLanes * j];
  float total = 0.0f;
#pragma unroll
  for (int j = 0; j < NJ; ++j) total = add_rn(total, warp_butterfly(mul_rn(x[j], x[j])));
  const float inv_rms = rms_inverse(total, kHeadDim, eps);
#pragma unroll
  for (int j = 0; j < NJ; ++j)
    x[j] = norm_scale(x[j], inv_rms, load_bf16(w + lane + kWarpLanes * j));
  const float pos = static_cast<float>(positions[row]);
#pragma unroll
  for (int j = 0; j < NJ / 2; ++j)
    rope_pair(x[j], x[j + NJ / 2], pos, inv_freq[lane + kWarpLanes * j]);
#pragma unroll
  for (int j = 0; j < NJ; ++j) v[lane + kWarpLanes * j] = x[j];
}

// q|k|v rows of the stacked projection [rows, qw + 2 kvw] into q [rows, qw], k, v [rows, kvw].
__global__ void split_qkv_kernel(const float* qkv, int64_t rows, int64_t qw, int64_t kvw, float* q,
                                 float* k, float* v) {
  const int64_t width = qw + 2 * kvw;
  const int64_t n = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, c = i % width;
    const float val = qkv[i];
    if (c < qw) {
      q[r * qw + c] = val;
    } else if (c < qw + kvw) {
      k[r * kvw + (c - qw)] = val;
    } else {
      v[r * kvw + (c - qw - kvw)] = val;
    }
  }
}

constexpr int kQkThreads = 128;  // 4 (row, head) units per block

template <int NJ>
void launch_qk(float* q, float* k, const bf16* q_w, const bf16* k_w, const int32_t* positions,
               const float* inv_freq, int64_t rows, int64_t heads, int64_t kv_heads, float eps,
               cudaStream_t stream) {
  const int64_t units = rows * (heads + kv_heads);
  const int64_t blocks = (units * kWarpLanes + kQkThreads - 1) / kQkThreads;
  qk_norm_rope_kernel<NJ><<<static_cast<unsigned>(blocks), kQkThreads, 0, stream>>>(
      q, k, q_w, k_w, positions, inv_freq, rows, heads, kv_heads, eps);
}

}  // namespace

cudaError_t launch_norm_rows(float* x_io, const float* x_in, const float* delta, const bf16* w,
                             int64_t rows, int64_t dim, float eps, float* y, bf16* y_bf16,
                             cudaStream_t stream) {
  if (rows > 0 && dim > 0) {
    norm_rows_kernel<<<static_cast<unsigned>(rows), norm_row_threads(dim), 0, stream>>>(
        x_io, x_in, delta, w, dim, eps, y, y_bf16);
  }
  return cudaGetLastError();
}

cudaError_t launch_qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                                const int32_t* positions, const float* inv_freq, int64_t rows,
                                int64_t heads, int64_t kv_heads, int64_t head_dim, float eps,
                                cudaStream_t stream) {
  if (rows <= 0 || heads + kv_heads <= 0) return cudaGetLastError();
  if (!qk_fused_head_dim_ok(head_dim)) return cudaErrorInvalidValue;
  switch (head_dim / kWarpLanes) {
    case 2:
      launch_qk<2>(q, k, q_norm_w, k_norm_w, positions, inv_freq, rows, heads, kv_heads, eps,
                   stream);
      break;
    case 4:
      launch_qk<4>(q, k, q_norm_w, k_norm_w, positions, inv_freq, rows, heads, kv_heads, eps,
                   stream);
      break;
    case 6:
      launch_qk<6>(q, k, q_norm_w, k_norm_w, positions, inv_freq, rows, heads, kv_heads, eps,
                   stream);
      break;
    default:
      launch_qk<8>(q, k, q_norm_w, k_norm_w, positions, inv_freq, rows, heads, kv_heads, eps,
                   stream);
      break;
  }
  return cudaGetLastError();
}

cudaError_t launch_split_qkv(const float* qkv, int64_t rows, int64_t q_width, int64_t kv_width,
                             float* q, float* k, float* v, cudaStream_t stream) {
  const int64_t n = rows * (q_width + 2 * kv_width);
  if (n > 0) {
    const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65535LL * 32);
    split_qkv_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(qkv, rows, q_width,
                                                                        kv_width, q, k, v);
  }
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
