// Helpers shared by the kernel tests (tests/kernels) and the GPU tests (tests/gpu, also built
// standalone on the device machine by tools/device/standalone): seeded random tensors, bf16
// conversions of whole vectors, and one elementwise closeness check that reports the first
// mismatches.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/bf16.h"

namespace moe::test {

inline std::vector<float> random_floats(std::mt19937& rng, int64_t n, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// bf16 values uniform in [-scale, scale].
inline std::vector<bf16> random_bf16(std::mt19937& rng, int64_t n, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<bf16> v(static_cast<size_t>(n));
  for (bf16& x : v) x = float_to_bf16(dist(rng));
  return v;
}

inline std::vector<float> rounded_to_bf16(std::vector<float> v) {
  for (float& x : v) x = round_to_bf16(x);
  return v;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

inline std::vector<float> to_floats(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}

// |got[i] - want[i]| <= abs_tol(i) + rel_tol * |want[i]| for every i < n (NaN matches NaN).
template <class AbsTol>
::testing::AssertionResult elementwise_close(const float* got, const float* want, int64_t n,
                                             AbsTol abs_tol, double rel_tol) {
  int64_t bad = 0;
  std::string first;
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got[i], w = want[i];
    const double err = std::fabs(g - w);
    const double limit = abs_tol(i) + rel_tol * std::fabs(w);
    const bool ok = (std::isnan(g) && std::isnan(w)) || err <= limit;
    if (!ok) {
      if (bad < 5) {
        first += " [" + std::to_string(i) + "] got " + std::to_string(g) + " want " +
                 std::to_string(w) + " (limit " + std::to_string(limit) + ");";
      }
      ++bad;
    }
    if (std::isfinite(err)) worst = std::max(worst, err);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << n << " elements out of tolerance (worst abs err " << worst
         << "):" << first;
}

}  // namespace moe::test
