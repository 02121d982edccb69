// Command-line options every model command shares, and validators whose messages read as
// sentences ("--max-new-tokens must be >= 1, got -5") instead of CLI11's range dumps.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"

namespace moe::runtime {

struct ModelOptions {
  std::string model;    // model YAML, config.json or checkpoint directory
  std::string weights;  // checkpoint directory backing a YAML model
  kernels::BackendKind backend = kernels::BackendKind::kCpu;
  std::optional<kernels::ComputeDtype>
      compute_dtype;                       // unset: the backend's own (cpu fp32, cuda bf16)
  std::optional<parallel::CommKind> comm;  // unset: nccl with cuda, mpi with cpu
  std::string placement;                   // placement YAML
  std::optional<bool> graphs;  // --graph on | off; unset: on where the backend has graphs (cuda)
  std::optional<kernels::WireDtype> dispatch_dtype;  // unset: the activation dtype
  std::optional<parallel::ExchangeKind> exchange;    // unset: hierarchical across nodes
  bool overlap = false;                              // --overlap on: two micro-batches per step
  std::string json;                                  // rank 0 writes the results here as JSON
  std::string trace_out;  // rank 0 writes the run's routing trace here (runtime/io/trace.h)
  double timeout_s = 120;
  int threads = 0;  // host compute threads per rank; 0: cores on this node / ranks on this node
  int ranks_per_node = 0;  // nodes of this many consecutive ranks; 0: detected from MPI
  bool quiet = false;
  bool quantize_fp8 = false;  // --quantize fp8: bf16 weights held as e4m3 + block scales

  parallel::CommKind resolved_comm() const {
    if (comm) return *comm;
    return backend == kernels::BackendKind::kCuda ? parallel::CommKind::kNccl
                                                  : parallel::CommKind::kMpi;
  }
};

// Adds --model, --weights, --backend, --compute-dtype, --comm, --placement, --graph,
// --dispatch-dtype, --overlap, --json, --timeout, --threads, --ranks-per-node, --quiet,
// --quantize.
void add_model_options(CLI::App* cmd, ModelOptions& o, bool model_required);

// Number validators: "must be >= lo" / "must be > lo", naming the value given.
CLI::Validator at_least(double lo);
CLI::Validator greater_than(double lo);
// One of `choices`, listed in the message.
CLI::Validator one_of(std::vector<std::string> choices);

// An option whose text must be one of `names` (checked with one_of's message), stored as the
// matching value: flags become enums here, at the edge.
template <class T, class Target>
CLI::Option* add_choice(CLI::App* cmd, const std::string& flag, Target& target,
                        std::vector<std::pair<std::string, T>> names, const std::string& help) {
  std::vector<std::string> keys;
  for (const auto& n : names) keys.push_back(n.first);
  return cmd
      ->add_option_function<std::string>(
          flag,
          [&target, names](const std::string& text) {
            for (const auto& [name, value] : names) {
              if (name == text) target = value;
            }
          },
          help)
      ->check(one_of(std::move(keys)));
}
// The choices of the shared flags.
std::vector<std::pair<std::string, kernels::BackendKind>> backend_choices();
std::vector<std::pair<std::string, kernels::ComputeDtype>> compute_dtype_choices();
std::vector<std::pair<std::string, parallel::CommKind>> comm_choices();
std::vector<std::pair<std::string, kernels::WireDtype>> wire_dtype_choices();
// --exchange: flat | hierarchical (run's and predict's).
std::vector<std::pair<std::string, parallel::ExchangeKind>> exchange_choices();

}  // namespace moe::runtime
