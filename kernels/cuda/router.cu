// Router kernel: one warp per token row. Softmax over all experts in fp32 (probabilities kept in
// shared memory), then k rounds of a warp argmax (largest probability, ties to the lower expert
// id, the same order as a stable descending sort), then optional renormalisation.
#include <cuda_runtime.h>

#include "kernels/cuda/api.cuh"

namespace moe::kernels::cuda {
namespace {

constexpr int kRouterWarps = 4;

__global__ void router_topk_kernel(const float* logits, int64_t rows, int64_t experts, int64_t k,
                                   bool renormalise, int32_t* ids, float* weights) {
  extern __shared__ float probs_all[];  // [kRouterWarps, experts]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRouterWarps + warp;
  if (row >= rows) return;  // whole warp leaves together; no block-level sync below
  float* probs = probs_all + static_cast<int64_t>(warp) * experts;
  const float* l = logits + row * experts;

  float m = -INFINITY;
  for (int64_t e = lane; e < experts; e += 32) m = fmaxf(m, l[e]);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float sum = 0.0f;
  for (int64_t e = lane; e < experts; e += 32) {
    const float p = expf(l[e] - m);
    probs[e] = p;
    sum += p;
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  int32_t* out_ids = ids + row * k;
  float* out_w = weights + row * k;
  if (!isfinite(sum) || !(sum > 0.0f)) {
    for (int64_t t = lane; t < k; t += 32) {
      out_ids[t] = -1;
      out_w[t] = 0.0f;
    }
    return;
  }
  const float inv_sum = 1.0f / sum;
  for (int64_t e = lane; e < experts; e += 32) probs[e] = probs[e] * inv_sum;
  __syncwarp();

  float picked = 0.0f;
  for (int64_t t = 0; t < k; ++t) {
    float best = -1.0f;
    int32_t best_id = INT32_MAX;
    for (int64_t e = lane; e < experts; e += 32) {
      const float p = probs[e];  // lane-strided ascending ids: first max is the lowest id
      if (p > best) {
        best = p;
        best_id = static_cast<int32_t>(e);
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int32_t oid = __shfl_xor_sync(0xffffffffu, best_id, o);
      if (ob > best || (ob == best && oid < best_id)) {
        best = ob;
        best_id = oid;
      }
    }
    if (lane == 0) {
      out_ids[t] = best_id;
      out_w[t] = best;
      probs[best_id] = -2.0f;  // taken: below every probability and below the -1 start value
    }
    picked += best;
    __syncwarp();
  }
  if (renormalise) {
    const float inv_picked = 1.0f / picked;
    __syncwarp();
    for (int64_t t = lane; t < k; t += 32) out_w[t] = out_w[t] * inv_picked;
  }
}

}  // namespace

cudaError_t launch_router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k,
                               bool renormalise, int32_t* ids, float* weights,
                               cudaStream_t stream) {
  if (rows <= 0) return cudaGetLastError();
  if (experts <= 0 || experts > kRouterMaxExperts || k < 1 || k > experts) {
    return cudaErrorInvalidValue;
  }
  const unsigned blocks = static_cast<unsigned>((rows + kRouterWarps - 1) / kRouterWarps);
  const size_t smem = sizeof(float) * kRouterWarps * static_cast<size_t>(experts);
  router_topk_kernel<<<blocks, 32 * kRouterWarps, smem, stream>>>(logits, rows, experts, k,
                                                                  renormalise, ids, weights);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
