// Move-only owners of CUDA/cuBLAS resources: stream, event, cuBLAS handle, device buffer and
// pinned host buffer. Creation throws moe::Error; destruction never throws (errors at teardown
// are ignored: the process is usually unwinding from another error already).
// Host-compiled header (CUDA runtime and cuBLAS C APIs only).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "kernels/common/check.h"

namespace moe::kernels::cuda {

class Stream {
 public:
  Stream() = default;
  static Stream create_non_blocking() {
    Stream s;
    MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking));
    return s;
  }
  ~Stream() { reset(); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept {
    if (this != &o) {
      reset();
      stream_ = std::exchange(o.stream_, nullptr);
    }
    return *this;
  }
  void reset() noexcept {
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class Event {
 public:
  Event() = default;
  // Timing disabled unless asked: cheaper to record and to wait on.
  static Event create(bool timing = false) {
    Event e;
    MOE_CUDA_CHECK(
        cudaEventCreateWithFlags(&e.event_, timing ? cudaEventDefault : cudaEventDisableTiming));
    return e;
  }
  ~Event() { reset(); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event(Event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
  Event& operator=(Event&& o) noexcept {
    if (this != &o) {
      reset();
      event_ = std::exchange(o.event_, nullptr);
    }
    return *this;
  }
  void reset() noexcept {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
    event_ = nullptr;
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class CublasHandle {
 public:
  CublasHandle() = default;
  static CublasHandle create(cudaStream_t stream) {
    CublasHandle h;
    MOE_CUBLAS_CHECK(cublasCreate(&h.handle_));
    MOE_CUBLAS_CHECK(cublasSetStream(h.handle_, stream));
    return h;
  }
  ~CublasHandle() { reset(); }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  CublasHandle(CublasHandle&& o) noexcept : handle_(std::exchange(o.handle_, nullptr)) {}
  CublasHandle& operator=(CublasHandle&& o) noexcept {
    if (this != &o) {
      reset();
      handle_ = std::exchange(o.handle_, nullptr);
    }
    return *this;
  }
  void reset() noexcept {
    if (handle_ != nullptr) (void)cublasDestroy(handle_);
    handle_ = nullptr;
  }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

// Move-only owner of CUDA-allocated bytes; Memory says how they are allocated and freed.
template <class Memory>
class CudaBytes {
 public:
  CudaBytes() = default;
  explicit CudaBytes(size_t size_bytes) : size_bytes_(size_bytes) {
    if (size_bytes_ > 0) MOE_CUDA_CHECK(Memory::allocate(&ptr_, size_bytes_));
  }
  ~CudaBytes() { reset(); }
  CudaBytes(const CudaBytes&) = delete;
  CudaBytes& operator=(const CudaBytes&) = delete;
  CudaBytes(CudaBytes&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_bytes_(std::exchange(o.size_bytes_, 0)) {}
  CudaBytes& operator=(CudaBytes&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_bytes_ = std::exchange(o.size_bytes_, 0);
    }
    return *this;
  }
  void reset() noexcept {
    if (ptr_ != nullptr) (void)Memory::release(ptr_);
    ptr_ = nullptr;
    size_bytes_ = 0;
  }
  void* get() const { return ptr_; }
  size_t size_bytes() const { return size_bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t size_bytes_ = 0;
};

// Device memory from cudaMalloc (never managed memory).
struct DeviceMemory {
  static cudaError_t allocate(void** p, size_t n) { return cudaMalloc(p, n); }
  static cudaError_t release(void* p) { return cudaFree(p); }
};
// Page-locked host memory (cudaMallocHost): the source of asynchronous uploads.
struct PinnedMemory {
  static cudaError_t allocate(void** p, size_t n) { return cudaMallocHost(p, n); }
  static cudaError_t release(void* p) { return cudaFreeHost(p); }
};
using DeviceBytes = CudaBytes<DeviceMemory>;
using PinnedBytes = CudaBytes<PinnedMemory>;

}  // namespace moe::kernels::cuda
