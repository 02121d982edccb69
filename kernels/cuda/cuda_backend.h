// The CUDA backend: every Backend op on one GPU, enqueued in order on one stream; weights,
// activations and the KV cache in VRAM (cudaMalloc, never managed memory). Host-side integer
// metadata is staged through pinned memory into reusable device buffers, one upload per op.
// This header needs no CUDA headers, so the backend factory and the runtime include it freely.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/backend.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace moe::kernels {

// CUDA devices visible to this process; 0 when there is no driver or no GPU (never throws).
int cuda_device_count();

class CudaBackend : public Backend {
 public:
  // cuda: device memory, a bf16 KV cache, bf16 compute with bf16 activation copies.
  CudaBackend()
      : Backend({backend_kind_name(BackendKind::kCuda), false,
                 ::moe::kernels::kv_cache_dtype(BackendKind::kCuda), ComputeDtype::kBF16, true}) {}

  // The stream every op is enqueued on (a cudaStream_t), e.g. for a communicator to order its
  // own stream against.
  virtual CUstream_st* stream() const = 0;
  virtual int device() const = 0;
  virtual int num_sms() const = 0;
  // cudaMemGetInfo view of the whole device: total (used = total - free is device_used_bytes).
  virtual size_t device_total_bytes() const = 0;
  // Of allocated_bytes(), the part the backend holds for its own scratch and staging.
  virtual size_t internal_bytes() const = 0;

  // Ops beyond the Backend interface (benchmarks, tests): out = silu(gate) * up (fp32), and
  // deterministic uniform fills in [-scale, scale] computed on the device.
  virtual void silu_mul(const float* gate, const float* up, int64_t n, float* out) = 0;
  virtual void fill_random_bf16(bf16* dst, int64_t n, uint64_t seed, float scale) = 0;
  virtual void fill_random_f32(float* dst, int64_t n, uint64_t seed, float scale) = 0;
};

// Backend on device local_rank % cuda_device_count(). Throws moe::Error when there is no device.
std::unique_ptr<Backend> make_cuda_backend(int local_rank);

// The CUDA backend behind `backend`, or nullptr when it is another backend.
CudaBackend* as_cuda_backend(Backend* backend);

}  // namespace moe::kernels
