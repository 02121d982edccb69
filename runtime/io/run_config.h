// RUN.yaml for `moe-ep run`: which model, weights, placement and backend, and the workload
// (sequences, prompt length, decode steps). Relative paths resolve against the YAML's folder
// first, then the working directory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::runtime {

struct Workload {
  int64_t num_sequences = 4;
  int64_t prompt_len = 32;
  int64_t decode_steps = 8;
  uint64_t seed = 1;
};

struct RunConfig {
  std::string model;      // model YAML, config.json or checkpoint directory
  std::string weights;    // optional checkpoint directory for a YAML model
  std::string placement;  // optional placement YAML
  std::string backend = "cpu";
  std::string comm;       // empty: nccl with cuda, mpi with cpu
  int64_t threads = 0;    // BLAS threads per rank; 0: cores / ranks on the node
  double timeout_s = 120;
  bool compare_sgemm = true;
  Workload workload;
  std::string source;
};

// Loads RUN.yaml and applies --set key=value overrides; errors name the file, key and line.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace moe::runtime
