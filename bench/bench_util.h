// Helpers every benchmark driver shares: seeded random operands, and the main() of a driver that
// runs under mpirun (MPI session, one error line, the whole job ended on failure), which the
// tests' MPI workers use too.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <exception>
#include <random>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace moe::bench {

// n uniform values in [-1, 1) from `seed`.
inline std::vector<float> rand_f32(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// n bf16 values uniform in [-scale, scale) from `seed`.
inline std::vector<bf16> rand_bf16(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<bf16> v(static_cast<size_t>(n));
  for (auto& x : v) x = float_to_bf16(d(rng));
  return v;
}

// main() of an MPI driver (the benchmarks and the tests' MPI workers): `run(argc, argv)` with MPI
// up, its result the exit code; any error prints one line naming the driver and ends every rank
// with exit code 1.
template <class Run>
int mpi_main(int argc, char** argv, const char* name, Run run) {
  parallel::MpiSession mpi(&argc, &argv);
  set_error_rank(mpi.world_rank());
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    parallel::MpiSession::abort_job(fmt::format("{}: error: {}", name, e.what()), 1);
  }
}

}  // namespace moe::bench
