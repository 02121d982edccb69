// Fixture and helpers of the GPU op tests: a CUDA backend next to a host reference backend (the
// CPU backend in the main build; the naive reference ops in the minimal device build, where
// MOE_GPU_TEST_REFERENCE_ONLY is defined), typed upload/download, seeded random data and
// dtype-aware closeness checks. Every test skips cleanly when no CUDA device is visible.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/bf16.h"
#include "kernels/common/check.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/common/test_data.h"
#ifdef MOE_GPU_TEST_REFERENCE_ONLY
#include "reference_backend.h"
#endif

namespace moe::kernels::test {

inline std::unique_ptr<Backend> make_reference_backend() {
#ifdef MOE_GPU_TEST_REFERENCE_ONLY
  return std::make_unique<ReferenceBackend>();
#else
  return make_backend("cpu", 0);
#endif
}

using moe::test::random_bf16;
using moe::test::random_floats;
using moe::test::rounded_to_bf16;
using moe::test::to_bf16;
using moe::test::to_floats;

inline double rms(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += static_cast<double>(x) * x;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

// |got - want| <= abs[i] + rel * |want| elementwise (abs per element or one value for all).
inline ::testing::AssertionResult close_with(const std::vector<float>& got,
                                             const std::vector<float>& want,
                                             const std::vector<double>& abs_tol, double rel_tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  return moe::test::elementwise_close(
      got.data(), want.data(), static_cast<int64_t>(got.size()),
      [&](int64_t i) { return abs_tol[abs_tol.size() == 1 ? 0 : static_cast<size_t>(i)]; },
      rel_tol);
}

inline ::testing::AssertionResult close_to(const std::vector<float>& got,
                                           const std::vector<float>& want, double abs_tol,
                                           double rel_tol) {
  return close_with(got, want, std::vector<double>{abs_tol}, rel_tol);
}

// Error bound of y = x W^T when x is rounded to bf16 on the GPU: each product x_i w_i moves by
// at most 2^-9 |x_i w_i|, so |dy_o| <= 2^-9 sum_i |x_i w_o,i|; 2^-8 leaves room for fp32
// accumulation order. One bound per output element.
inline std::vector<double> bf16_input_bound(const std::vector<float>& x, const std::vector<bf16>& w,
                                            int64_t rows, int64_t in, int64_t out) {
  std::vector<double> bound(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t i = 0; i < in; ++i) {
        s += std::fabs(static_cast<double>(x[r * in + i]) * bf16_to_float(w[o * in + i]));
      }
      bound[r * out + o] = s * (1.0 / 256.0) + 1e-6;
    }
  }
  return bound;
}

// Buffer in `backend` memory holding `host`; and back.
template <class T>
Buffer<T> upload_vector(Backend& backend, const std::vector<T>& host) {
  Buffer<T> b(backend, host.size());
  if (!host.empty()) backend.upload(b.data(), host.data(), host.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> download_vector(Backend& backend, const Buffer<T>& b) {
  std::vector<T> host(b.size());
  if (!host.empty()) backend.download(host.data(), b.data(), b.size_bytes());
  return host;
}

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible: GPU test skipped";
    gpu_ = make_cuda_backend(0);
    ref_ = make_reference_backend();
  }

  template <class T>
  Buffer<T> to_gpu(const std::vector<T>& host) {
    return upload_vector(*gpu_, host);
  }
  template <class T>
  std::vector<T> from_gpu(const Buffer<T>& b) {
    return download_vector(*gpu_, b);
  }
  CudaBackend& cuda() { return *as_cuda_backend(gpu_.get()); }

  // One RMSNorm case (eps 1e-6): x in [-3, 3], weights in [-2, 2], the reference output, and x,
  // the weights and an output buffer on the GPU.
  struct RmsNormCase {
    std::vector<float> x;
    std::vector<bf16> w;
    std::vector<float> want;
    Buffer<float> d_x;
    Buffer<bf16> d_w;
    Buffer<float> d_y;
  };
  RmsNormCase rmsnorm_case(std::mt19937& rng, int64_t rows, int64_t dim) {
    RmsNormCase c;
    c.x = random_floats(rng, rows * dim, -3.0f, 3.0f);
    c.w = random_bf16(rng, dim, 2.0f);
    c.want.resize(c.x.size());
    ref_->rmsnorm(c.x.data(), c.w.data(), rows, dim, 1e-6f, c.want.data());
    c.d_x = to_gpu(c.x);
    c.d_w = to_gpu(c.w);
    c.d_y = Buffer<float>(*gpu_, c.x.size());
    return c;
  }

  std::unique_ptr<Backend> gpu_;
  std::unique_ptr<Backend> ref_;
};

}  // namespace moe::kernels::test
