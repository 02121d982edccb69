// BLAS housekeeping for the CPU backend: thread count, and a plain cblas_sgemm rate measured on
// given shapes (the yardstick `moe-ep run` reports the forward's GFLOP/s against).
#pragma once

#include <cstdint>
#include <vector>

namespace moe::kernels::cpu {

void set_blas_threads(int num_threads);
int blas_threads();

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;  // C [m, n] = A [m, k] . B^T, B [n, k]
  int64_t count = 1;            // how many times the forward runs this shape
};

struct SgemmProbe {
  double flops = 0;
  double seconds = 0;
  double gflops() const { return seconds > 0 ? flops / seconds * 1e-9 : 0.0; }
};

// Runs each shape `count` times with fp32 operands (one warm-up pass first) and times it.
SgemmProbe measure_sgemm(const std::vector<GemmShape>& shapes);

}  // namespace moe::kernels::cpu
