// `moe-ep calibrate`: measures this machine's hardware profile through what runs — the backend's
// own linear, grouped expert GEMM, attention and element-wise ops (kernels::Backend), the
// dispatcher's host layout, and the communicator's all_to_all / all_to_all_v at the rank count
// the job was launched with. Compute is measured on rank 0 with `threads` threads (rates per
// core on a CPU); every rank takes part in the communicator probes.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "runtime/analysis/hardware.h"
#include "runtime/io/config.h"

namespace moe::runtime {

struct CalibrateOptions {
  bool measure_compute = true;  // false: keep `base`'s compute and memory (--merge)
  int threads = 1;              // host threads while measuring compute
  int cores = 0;                // CPU cores of the node (0: the cores this process may run on)
  std::string name = "this-machine";
};

struct CalibrateResult {
  HardwareProfile profile;
  nlohmann::json samples;  // every raw measurement, for the record
};

// y = intercept + slope x by least squares on the relative residual (weights 1 / y^2), as the
// link probes fit time = latency + bytes / bandwidth over sizes spanning three orders of
// magnitude: a plain fit lets the largest transfers decide the intercept, so their noise swung
// the latency between 0 and 150 us from one calibration to the next.
struct LineFit {
  double intercept = 0, slope = 0;
};
LineFit relative_least_squares(const std::vector<double>& x, const std::vector<double>& y);

// Collective (every rank calls it). `shapes` gives the GEMM shapes to probe (hidden, expert
// width, experts, heads); `base` supplies what is not measured (compute with --merge, and the
// measured comm entries of other rank counts, which are kept). Same result on every rank.
CalibrateResult calibrate(kernels::Backend& backend, parallel::Communicator& comm,
                          const ModelConfig& shapes, const HardwareProfile& base,
                          const CalibrateOptions& options);

}  // namespace moe::runtime
