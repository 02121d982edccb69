// Kernel-test tolerances and the closeness check |got - want| <= tol.abs + tol.rel * |want| over
// the shared helpers of tests/common/test_data.h.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/bf16.h"
#include "tests/common/test_data.h"

namespace moe::kernels::test {

struct Tol {
  double abs = 0.0;
  double rel = 0.0;
};

// fp32 elementwise ops (a handful of roundings).
inline constexpr Tol kTolElementwise{1e-6, 1e-5};
// GEMM-based ops with reductions of up to a few thousand terms.
inline constexpr Tol kTolGemm{2e-5, 1e-4};

using moe::test::random_bf16;
using moe::test::random_floats;

inline ::testing::AssertionResult all_close(const float* got, const float* want, int64_t n,
                                            Tol tol) {
  return moe::test::elementwise_close(
             got, want, n, [&](int64_t) { return tol.abs; }, tol.rel)
         << " (abs " << tol.abs << ", rel " << tol.rel << ")";
}

inline ::testing::AssertionResult all_close(const std::vector<float>& got,
                                            const std::vector<float>& want, Tol tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  return all_close(got.data(), want.data(), static_cast<int64_t>(got.size()), tol);
}

}  // namespace moe::kernels::test
