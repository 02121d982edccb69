// OpenBLAS thread control, host argmax and the sgemm yardstick (kernels/cpu/host.h).
#include "kernels/cpu/host.h"

#include <cblas.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include "kernels/common/check.h"

namespace moe::kernels {

static_assert(kMaxCpus <= CPU_SETSIZE);

std::vector<int32_t> usable_cpu_mask() {
  std::vector<int32_t> mask(kMaxCpus, 0);
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < kMaxCpus; ++c) mask[static_cast<size_t>(c)] = CPU_ISSET(c, &set) ? 1 : 0;
  } else {
    const int n = std::min<int>(kMaxCpus, static_cast<int>(std::thread::hardware_concurrency()));
    std::fill(mask.begin(), mask.begin() + std::max(1, n), 1);
  }
  return mask;
}

int usable_cores() {
  const std::vector<int32_t> mask = usable_cpu_mask();
  return std::max<int>(1, static_cast<int>(std::count(mask.begin(), mask.end(), 1)));
}

void set_host_threads(int num_threads) {
  openblas_set_num_threads(num_threads < 1 ? 1 : num_threads);
}
int host_threads() {
  return openblas_get_num_threads();
}

int64_t argmax(const float* x, int64_t n) {
  MOE_CHECK(n > 0, "argmax of an empty range");
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

SgemmProbe measure_host_sgemm(const std::vector<GemmShape>& shapes) {
  int64_t max_a = 1, max_b = 1, max_c = 1;
  for (const auto& s : shapes) {
    max_a = std::max(max_a, s.m * s.k);
    max_b = std::max(max_b, s.n * s.k);
    max_c = std::max(max_c, s.m * s.n);
  }
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> a(static_cast<size_t>(max_a)), b(static_cast<size_t>(max_b)),
      c(static_cast<size_t>(max_c));
  for (auto& v : a) v = u(rng);
  for (auto& v : b) v = u(rng);
  auto run_all = [&](bool timed) {
    SgemmProbe p;
    auto t0 = std::chrono::steady_clock::now();
    for (const auto& s : shapes) {
      if (s.m == 0 || s.n == 0 || s.k == 0) continue;
      for (int64_t i = 0; i < (timed ? s.count : 1); ++i) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(s.m),
                    static_cast<int>(s.n), static_cast<int>(s.k), 1.0f, a.data(),
                    static_cast<int>(s.k), b.data(), static_cast<int>(s.k), 0.0f, c.data(),
                    static_cast<int>(s.n));
        p.flops += 2.0 * static_cast<double>(s.m * s.n * s.k);
      }
    }
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return p;
  };
  run_all(false);
  return run_all(true);
}

}  // namespace moe::kernels
