// The e4m3 conversions of the large-batch FP8 GEMMs: weights dequantised to bf16 for a bf16 GEMM
// (GPUs without a block-scaled FP8 GEMM), and activation rows quantised in 1 x 128 groups for
// cuBLASLt's block-scaled FP8 GEMM. Per-element bodies: kernels/common/fp8.h.
#include <cuda_runtime.h>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/fused_math.h"

namespace moe::kernels::cuda {
namespace {

constexpr int kConvertThreads = 256;

__global__ void dequantise_e4m3_kernel(const uint8_t* codes, const float* scales, int64_t rows,
                                       int64_t cols, bf16* out) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i].bits = f32_to_bf16_bits(e4m3_matrix_value(codes, scales, cols, i / cols, i % cols));
  }
}

// One warp per (row, 128-column group): the group's amax by butterfly, its scale, then its codes.
// scales [ceil(cols / 128), rows] (row index fastest), as cuBLASLt's VEC128_32F mode reads them.
__global__ void quantise_rows_e4m3_kernel(const float* x, const bf16* x_bf16, int64_t rows,
                                          int64_t cols, uint8_t* q, float* scales) {
  const int64_t groups = fp8_num_blocks(cols);
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarpLanes;
  const int lane = threadIdx.x % kWarpLanes;
  if (warp >= rows * groups) return;  // whole warps leave together
  const int64_t r = warp / groups, g = warp % groups;
  const int64_t c0 = g * kFp8Block;
  const int64_t c1 = c0 + kFp8Block < cols ? c0 + kFp8Block : cols;
  float v[kFp8Block / kWarpLanes];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kFp8Block / kWarpLanes; ++j) {
    const int64_t c = c0 + lane + j * kWarpLanes;
    v[j] = c < c1 ? (x != nullptr ? x[r * cols + c] : bf16_bits_to_f32(x_bf16[r * cols + c].bits))
                  : 0.0f;
    amax = fmaxf(amax, fabsf(v[j]));
  }
  for (int o = kWarpLanes / 2; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  }
  const float s = e4m3_block_scale(amax);
  if (lane == 0) scales[g * rows + r] = s;
#pragma unroll
  for (int j = 0; j < kFp8Block / kWarpLanes; ++j) {
    const int64_t c = c0 + lane + j * kWarpLanes;
    if (c < c1) q[r * cols + c] = e4m3_quantise(v[j], s);
  }
}

unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

}  // namespace

cudaError_t launch_dequantise_e4m3(WeightView w, int64_t rows, int64_t cols, bf16* out,
                                   cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaGetLastError();
  if (w.dtype != WeightDtype::kE4M3) return cudaErrorInvalidValue;
  dequantise_e4m3_kernel<<<blocks_for(rows * cols, kConvertThreads), kConvertThreads, 0, stream>>>(
      static_cast<const uint8_t*>(w.data), w.scales, rows, cols, out);
  return cudaGetLastError();
}

cudaError_t launch_quantise_rows_e4m3(const float* x, const bf16* x_bf16, int64_t rows,
                                      int64_t cols, uint8_t* q, float* scales,
                                      cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaGetLastError();
  if (x == nullptr && x_bf16 == nullptr) return cudaErrorInvalidValue;
  const int64_t threads = rows * fp8_num_blocks(cols) * kWarpLanes;
  quantise_rows_e4m3_kernel<<<blocks_for(threads, kConvertThreads), kConvertThreads, 0, stream>>>(
      x, x_bf16, rows, cols, q, scales);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
