// RUN.yaml for `moe-ep run`: which model, weights, placement and backend, and the workload
// (sequences, prompt length, decode steps). Relative paths resolve against the YAML's folder
// first, then the working directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "runtime/io/routing_spec.h"

namespace moe::runtime {

struct Workload {
  int64_t num_sequences = 4;
  int64_t prompt_len = 32;
  int64_t decode_steps = 8;
  uint64_t seed = 1;
  RoutingSpec routing;  // workload.routing: who picks each token's experts (default: the router)
};

// rebalance: {every: STEPS, window: STEPS, strategy: S, redundant: R} — after every `every`
// forward steps, the expert loads of the last `window` steps choose a new placement and expert
// weights move between ranks. every == 0: off.
struct RebalanceConfig {
  int64_t every = 0;
  int64_t window = 0;                   // 0: the same as every
  std::string strategy = "replicated";  // load_balanced | replicated
  int64_t redundant = 0;                // replicated: extra slots per layer
  bool enabled() const { return every > 0; }
};

struct RunConfig {
  std::string model;      // model YAML, config.json or checkpoint directory
  std::string weights;    // optional checkpoint directory for a YAML model
  std::string placement;  // optional placement YAML
  kernels::BackendKind backend = kernels::BackendKind::kCpu;
  std::optional<kernels::ComputeDtype>
      compute_dtype;                       // unset: the backend's own (cpu fp32, cuda bf16)
  std::optional<parallel::CommKind> comm;  // unset: nccl with cuda, mpi with cpu
  int64_t threads = 0;                     // BLAS threads per rank; 0: cores / ranks on the node
  double timeout_s = 120;
  bool compare_sgemm = true;
  Workload workload;
  RebalanceConfig rebalance;
  std::string source;
};

// Loads RUN.yaml and applies --set key=value overrides; errors name the file, key and line.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace moe::runtime
