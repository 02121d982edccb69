// Memory-bound CUDA kernels: conversions, embedding, RMSNorm, RoPE, SiLU*mul, row gathers (the
// grouped expert GEMM's pair gather among them) and scatters, and random fills. fp32 math
// throughout; bf16 is a storage format only (bits << 16 on load, round-to-nearest-even on store).
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/device_math.h"

namespace moe::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// Grid for a grid-stride loop over n elements (capped: the loop covers the rest).
unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535LL * 32));
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; every thread gets the result. Uses one __syncthreads pair.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int num_warps = (blockDim.x + 31) >> 5;
  float total = 0.0f;
  for (int w = 0; w < num_warps; ++w) total += warp_sums[w];  // same order in every thread
  return total;
}

__global__ void f32_to_bf16_kernel(const float* x, int64_t n, bf16* y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store_bf16(y + i, x[i]);
  }
}

__global__ void bf16_to_f32_kernel(const bf16* x, int64_t n, float* y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = load_bf16(x + i);
  }
}

__global__ void embedding_kernel(const bf16* table, int64_t hidden, const int32_t* ids,
                                 float* out) {
  const int64_t row = blockIdx.x;
  const bf16* src = table + static_cast<int64_t>(ids[row]) * hidden;
  float* dst = out + row * hidden;
  for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = load_bf16(src + c);
}

__global__ void rmsnorm_kernel(const float* x, const bf16* w, int64_t dim, float eps, float* y) {
  const int64_t row = blockIdx.x;
  const float* xr = x + row * dim;
  float* yr = y + row * dim;
  float sum_sq = 0.0f;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) sum_sq += xr[c] * xr[c];
  const float total = block_sum(sum_sq);
  const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(dim) + eps);
  // Each thread rewrites only the elements it read: x and y may alias.
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x)
    yr[c] = xr[c] * inv_rms * load_bf16(w + c);
}

__global__ void rope_kernel(float* x, const int32_t* positions, const float* inv_freq, int64_t rows,
                            int64_t heads, int64_t half) {
  const int64_t n = rows * heads * half;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t % half;
    const int64_t rh = t / half;  // row * heads + head
    const int64_t r = rh / heads;
    const float angle = static_cast<float>(positions[r]) * inv_freq[i];
    const float c = cosf(angle), s = sinf(angle);
    float* v = x + rh * 2 * half;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

__global__ void silu_mul_kernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = silu(gate[i]) * up[i];
  }
}

__global__ void silu_mul_bf16_kernel(const bf16* gate, const bf16* up, int64_t n, bf16* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store_bf16(out + i, silu(load_bf16(gate + i)) * load_bf16(up + i));
  }
}

__global__ void silu_mul_to_bf16_kernel(const float* gate, const float* up, int64_t n, bf16* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store_bf16(out + i, silu(gate[i]) * up[i]);
  }
}

__global__ void add_inplace_kernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

__global__ void gather_rows_kernel(const float* src, int64_t width, const int32_t* idx,
                                   float* dst) {
  const int64_t row = blockIdx.x;
  const float* s = src + static_cast<int64_t>(idx[row]) * width;
  float* d = dst + row * width;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) d[c] = s[c];
}

// dst row j = bf16(x row row_index[pair[j]]) (or the x_bf16 row when given); pair[j] < 0 gives
// a zero row (padding).
__global__ void gather_pairs_to_bf16_kernel(const float* x, const bf16* x_bf16, int64_t width,
                                            const int32_t* pair, const int32_t* row_index,
                                            bf16* dst) {
  const int64_t row = blockIdx.x;
  const int32_t at = pair[row];
  bf16* d = dst + row * width;
  if (at < 0) {
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) d[c].bits = 0;
    return;
  }
  const int64_t from = static_cast<int64_t>(row_index[at]) * width;
  if (x_bf16 != nullptr) {
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) d[c] = x_bf16[from + c];
    return;
  }
  const float* s = x + from;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) store_bf16(d + c, s[c]);
}

__global__ void scatter_rows_from_bf16_kernel(const bf16* src, int64_t width,
                                              const int32_t* dst_idx, float* dst, bf16* dst_bf16) {
  const int64_t row = blockIdx.x;
  const int32_t to = dst_idx[row];
  if (to < 0) return;
  const bf16* s = src + row * width;
  if (dst_bf16 != nullptr) {
    bf16* d = dst_bf16 + static_cast<int64_t>(to) * width;
    for (int64_t c = threadIdx.x; c < width; c += blockDim.x) d[c] = s[c];
    return;
  }
  float* d = dst + static_cast<int64_t>(to) * width;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) d[c] = load_bf16(s + c);
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ float uniform_pm(uint64_t seed, int64_t i, float scale) {
  const uint64_t h = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(i)));
  const float u = static_cast<float>(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
  return (2.0f * u - 1.0f) * scale;
}

__global__ void fill_random_bf16_kernel(bf16* dst, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store_bf16(dst + i, uniform_pm(seed, i, scale));
  }
}

__global__ void fill_random_f32_kernel(float* dst, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = uniform_pm(seed, i, scale);
  }
}

// Threads for a row-per-block kernel: enough warps for the row, at most kThreads.
unsigned row_threads(int64_t width) {
  const int64_t t = std::min<int64_t>(kThreads, (width + 31) / 32 * 32);
  return static_cast<unsigned>(std::max<int64_t>(t, 32));
}

// A grid-stride kernel over n elements; nothing to launch when n == 0.
template <class... Params, class... Args>
cudaError_t launch_elements(void (*kernel)(Params...), int64_t n, cudaStream_t stream,
                            Args... args) {
  if (n > 0) kernel<<<grid_for(n), kThreads, 0, stream>>>(args...);
  return cudaGetLastError();
}

// A row-per-block kernel over n rows of `width` elements; nothing to launch when either is 0.
template <class... Params, class... Args>
cudaError_t launch_rows(void (*kernel)(Params...), int64_t n, int64_t width, cudaStream_t stream,
                        Args... args) {
  if (n > 0 && width > 0) {
    kernel<<<static_cast<unsigned>(n), row_threads(width), 0, stream>>>(args...);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_f32_to_bf16(const float* x, int64_t n, bf16* y, cudaStream_t stream) {
  return launch_elements(f32_to_bf16_kernel, n, stream, x, n, y);
}

cudaError_t launch_bf16_to_f32(const bf16* x, int64_t n, float* y, cudaStream_t stream) {
  return launch_elements(bf16_to_f32_kernel, n, stream, x, n, y);
}

cudaError_t launch_embedding(const bf16* table, int64_t hidden, const int32_t* ids, int64_t n,
                             float* out, cudaStream_t stream) {
  return launch_rows(embedding_kernel, n, hidden, stream, table, hidden, ids, out);
}

cudaError_t launch_rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                           float* y, cudaStream_t stream) {
  return launch_rows(rmsnorm_kernel, rows, dim, stream, x, w, dim, eps, y);
}

cudaError_t launch_rope(float* x, const int32_t* positions, const float* inv_freq, int64_t rows,
                        int64_t heads, int64_t head_dim, cudaStream_t stream) {
  return launch_elements(rope_kernel, rows * heads * (head_dim / 2), stream, x, positions, inv_freq,
                         rows, heads, head_dim / 2);
}

cudaError_t launch_silu_mul(const float* gate, const float* up, int64_t n, float* out,
                            cudaStream_t stream) {
  return launch_elements(silu_mul_kernel, n, stream, gate, up, n, out);
}

cudaError_t launch_silu_mul_bf16(const bf16* gate, const bf16* up, int64_t n, bf16* out,
                                 cudaStream_t stream) {
  return launch_elements(silu_mul_bf16_kernel, n, stream, gate, up, n, out);
}

cudaError_t launch_silu_mul_to_bf16(const float* gate, const float* up, int64_t n, bf16* out,
                                    cudaStream_t stream) {
  return launch_elements(silu_mul_to_bf16_kernel, n, stream, gate, up, n, out);
}

cudaError_t launch_add_inplace(float* x, const float* y, int64_t n, cudaStream_t stream) {
  return launch_elements(add_inplace_kernel, n, stream, x, y, n);
}

cudaError_t launch_gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                               float* dst, cudaStream_t stream) {
  return launch_rows(gather_rows_kernel, n, width, stream, src, width, idx, dst);
}

cudaError_t launch_gather_pairs_to_bf16(const float* x, const bf16* x_bf16, int64_t width,
                                        const int32_t* pair, const int32_t* row_index, int64_t n,
                                        bf16* dst, cudaStream_t stream) {
  return launch_rows(gather_pairs_to_bf16_kernel, n, width, stream, x, x_bf16, width, pair,
                     row_index, dst);
}

cudaError_t launch_scatter_rows_from_bf16(const bf16* src, int64_t width, const int32_t* dst_idx,
                                          int64_t n, float* dst, bf16* dst_bf16,
                                          cudaStream_t stream) {
  return launch_rows(scatter_rows_from_bf16_kernel, n, width, stream, src, width, dst_idx, dst,
                     dst_bf16);
}

cudaError_t launch_fill_random_bf16(bf16* dst, int64_t n, uint64_t seed, float scale,
                                    cudaStream_t stream) {
  return launch_elements(fill_random_bf16_kernel, n, stream, dst, n, seed, scale);
}

cudaError_t launch_fill_random_f32(float* dst, int64_t n, uint64_t seed, float scale,
                                   cudaStream_t stream) {
  return launch_elements(fill_random_f32_kernel, n, stream, dst, n, seed, scale);
}

}  // namespace moe::kernels::cuda
