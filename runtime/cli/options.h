// Command-line options every model command shares, and validators whose messages read as
// sentences ("--max-new-tokens must be >= 1, got -5") instead of CLI11's range dumps.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace moe::runtime {

struct ModelOptions {
  std::string model;    // model YAML, config.json or checkpoint directory
  std::string weights;  // checkpoint directory backing a YAML model
  std::string backend = "cpu";
  std::string compute_dtype;  // fp32 | bf16; empty: the backend's own (cpu fp32, cuda bf16)
  std::string comm;           // empty: nccl with cuda, mpi with cpu
  std::string placement;      // placement YAML
  std::string graph;          // on | off; empty: on where the backend has graphs (cuda)
  std::string json;           // rank 0 writes the results here as JSON
  std::string trace_out;      // rank 0 writes the run's routing trace here (runtime/io/trace.h)
  double timeout_s = 120;
  int threads = 0;  // host compute threads per rank; 0: cores on this node / ranks on this node
  bool quiet = false;

  std::string resolved_comm() const {
    return comm.empty() ? (backend == "cuda" ? "nccl" : "mpi") : comm;
  }
};

// Adds --model, --weights, --backend, --compute-dtype, --comm, --placement, --graph,
// --json, --timeout, --threads, --quiet.
void add_model_options(CLI::App* cmd, ModelOptions& o, bool model_required);

// Number validators: "must be >= lo" / "must be > lo", naming the value given.
CLI::Validator at_least(double lo);
CLI::Validator greater_than(double lo);
// One of `choices`, listed in the message.
CLI::Validator one_of(std::vector<std::string> choices);

}  // namespace moe::runtime
