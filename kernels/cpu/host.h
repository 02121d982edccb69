// Host-side helpers the runtime uses without reaching into a backend: the cores this process may
// run on, its compute threads (BLAS and the CPU backend's loops), argmax over host logits, and the
// plain sgemm rate `moe-ep run` reports the forward's GFLOP/s against.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::kernels {

// The cores this process may run on: its CPU affinity mask (taskset, mpirun --bind-to, a Slurm
// cpuset, a container's cpu set), not the machine's count. At least 1. As a mask: 1 for each
// usable CPU id below kMaxCpus (a fixed length, so that ranks can OR theirs by a max-reduce).
inline constexpr int kMaxCpus = 1024;
int usable_cores();
std::vector<int32_t> usable_cpu_mask();

void set_host_threads(int num_threads);
int host_threads();

// Index of the largest element (the first on ties). Throws on n == 0.
int64_t argmax(const float* x, int64_t n);

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;  // C [m, n] = A [m, k] . B^T, B [n, k]
  int64_t count = 1;            // how many times the forward runs this shape
};

struct SgemmProbe {
  double flops = 0;
  double seconds = 0;
  double gflops() const { return seconds > 0 ? flops / seconds * 1e-9 : 0.0; }
};

// Runs each shape `count` times with fp32 operands through cblas_sgemm on the host threads
// (one warm-up pass first) and times it.
SgemmProbe measure_host_sgemm(const std::vector<GemmShape>& shapes);

}  // namespace moe::kernels
