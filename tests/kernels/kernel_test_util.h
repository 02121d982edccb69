// Shared helpers for the kernel tests: seeded random tensors and an elementwise closeness check
// |got - want| <= tol_abs + tol_rel * |want| that reports the first mismatches.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/bf16.h"

namespace moe::kernels::test {

struct Tol {
  double abs = 0.0;
  double rel = 0.0;
};

// fp32 elementwise ops (a handful of roundings).
inline constexpr Tol kTolElementwise{1e-6, 1e-5};
// GEMM-based ops with reductions of up to a few thousand terms.
inline constexpr Tol kTolGemm{2e-5, 1e-4};

inline std::vector<float> random_floats(std::mt19937& rng, int64_t n, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// bf16 weights uniform in [-scale, scale].
inline std::vector<bf16> random_bf16(std::mt19937& rng, int64_t n, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<bf16> v(static_cast<size_t>(n));
  for (bf16& x : v) x = float_to_bf16(dist(rng));
  return v;
}

inline ::testing::AssertionResult all_close(const float* got, const float* want, int64_t n,
                                            Tol tol) {
  int64_t bad = 0;
  std::string first;
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got[i], w = want[i];
    const double err = std::fabs(g - w);
    const double limit = tol.abs + tol.rel * std::fabs(w);
    const bool ok = (std::isnan(g) && std::isnan(w)) || err <= limit;
    if (!ok) {
      if (bad < 5)
        first += " [" + std::to_string(i) + "] got " + std::to_string(g) + " want " +
                 std::to_string(w) + ";";
      ++bad;
    }
    if (std::isfinite(err)) worst = std::max(worst, err);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << n << " elements out of tolerance (abs " << tol.abs << ", rel "
         << tol.rel << "; worst abs err " << worst << "):" << first;
}

inline ::testing::AssertionResult all_close(const std::vector<float>& got,
                                            const std::vector<float>& want, Tol tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  return all_close(got.data(), want.data(), static_cast<int64_t>(got.size()), tol);
}

}  // namespace moe::kernels::test
