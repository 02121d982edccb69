// Counter-based randomness shared by host code that must give the same numbers on every rank
// and for any rank count (synthetic weights, synthetic routing, sampling): splitmix64's
// finaliser of x + golden ratio (Steele, Lea, Flood 2014).
#pragma once

#include <cstdint>

namespace moe {

inline constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

// A well-mixed 64-bit function of x (bijective).
constexpr uint64_t splitmix64(uint64_t x) {
  x += kGoldenGamma;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace moe
