// A model session on this rank: communicator, backend, config, placement, weights and model,
// built in dependency order by open_session(), the one place that wires them together (command
// code never names a concrete backend or communicator). Teardown is explicit on the normal path.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"
#include "runtime/cli/options.h"
#include "runtime/io/config.h"
#include "runtime/io/run_config.h"
#include "runtime/io/weights.h"
#include "runtime/model/fault_injection.h"
#include "runtime/model/model.h"
#include "runtime/model/trace_recorder.h"

namespace moe::runtime {

struct Session {
  std::unique_ptr<parallel::Communicator> comm;
  std::unique_ptr<kernels::Backend> backend;
  ModelConfig config;
  std::optional<parallel::Placement> placement;
  std::unique_ptr<WeightSource> weights;
  // The model's routing hooks, in the order they run: the command's routing source (replayed or
  // synthetic routing; not owned), MOE_EP_FAULT's fault, and the --trace-out recorder last, so it
  // records what the others chose.
  RoutingHook* routing_source = nullptr;
  std::unique_ptr<FaultInjection> fault;
  std::unique_ptr<TraceRecorder> trace_recorder;
  std::unique_ptr<Model> model;
  bool from_checkpoint = false;
  double load_s = 0;
  int64_t device_used_at_open = -1;  // device-wide bytes in use before the model (-1: host)
  nlohmann::json load_per_rank = nlohmann::json::array();  // what each rank read and holds

  int rank() const { return comm->rank(); }
  int size() const { return comm->size(); }
  ~Session();
};

// Builds everything for a model command. `max_seqs` and `max_len` size the KV cache for the
// whole batch (this rank holds ceil(max_seqs / N) sequences). Collective.
std::unique_ptr<Session> open_session(const ModelOptions& options, int64_t max_seqs,
                                      int64_t max_len);

// Routes the model's tokens through `hook` (nullptr: its own router); the fault and trace hooks
// stay after it. `hook` must outlive the steps.
void set_routing_hook(Session& s, RoutingHook* hook);
// With --trace-out: gathers the recorded routing (collective) and rank 0 writes the file.
void write_trace_out(Session& s, const ModelOptions& options);

// `options` with the run config's model, weights and settings wherever the command line `cmd`
// left them unset.
ModelOptions model_options_with_run_config(const ModelOptions& options, const CLI::App& cmd,
                                           const RunConfig& rc);

// Rank 0 prints "moe-ep: <line>" to stderr unless quiet.
void log0(const Session& s, bool quiet, const std::string& line);

}  // namespace moe::runtime
