// `moe-ep predict`: the cost model's prefill time and decode step time, per phase, for a run
// config's workload on N ranks, from a hardware profile (runtime/analysis/cost_model.h). No
// weights, no collectives: one process computes it (under mpirun, rank 0 prints and writes).
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <optional>

#include "kernels/common/check.h"
#include "kernels/common/moe_wire.h"
#include "parallel/dispatcher.h"
#include "parallel/node_layout.h"
#include "runtime/analysis/cost_model.h"
#include "runtime/analysis/hardware.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/io/hostfile.h"
#include "runtime/io/run_config.h"

namespace moe::runtime {
namespace {

struct PredictArgs {
  std::string config, hardware, placement, json, hostfile;
  std::vector<std::string> sets;
  int ranks = 0;
  int ranks_per_node = 0;  // 0: the profile's comm.ranks_per_node
  int64_t max_routed_tokens = CostOptions{}.max_routed_tokens;
  std::optional<kernels::WireDtype> dispatch_dtype;
  std::optional<parallel::ExchangeKind> exchange;  // unset: the runtime's rule
  bool overlap = false;
};

// Default profile: the shipped one for the run's backend, in configs/hardware/ next to the run
// config's folder (configs/bench/x.yaml -> configs/hardware/), else under the working directory.
std::string default_hardware(const RunConfig& rc) {
  const std::string file =
      rc.backend == kernels::BackendKind::kCuda ? "h100-8gpu.yaml" : "cpu-2core-calibrated.yaml";
  namespace fs = std::filesystem;
  const fs::path near = fs::path(rc.source).parent_path().parent_path() / "hardware" / file;
  if (fs::exists(near)) return near.string();
  return (fs::path("configs") / "hardware" / file).string();
}

// --hostfile or --ranks-per-node: the nodes the ranks fill, which price intra- and inter-node
// peers apart (HardwareProfile::ranks_per_node) and pick the exchange. A measured entry for the
// rank count prices the nodes it was calibrated on, so it must agree.
void apply_node_layout(const PredictArgs& a, HardwareProfile& hw) {
  MOE_CHECK_AS("config", a.hostfile.empty() || a.ranks_per_node == 0,
               "give --hostfile or --ranks-per-node, not both");
  std::string flag;
  if (!a.hostfile.empty()) {
    const Hostfile hosts = load_hostfile(a.hostfile);
    hosts.check_ranks(a.ranks, fmt::format("--ranks {}", a.ranks));
    hw.ranks_per_node = hosts.slots_per_node();
    flag = fmt::format("--hostfile {} (nodes of {})", a.hostfile, hw.ranks_per_node);
  } else if (a.ranks_per_node > 0) {
    parallel::node_layout_for_ranks_per_node(a.ranks, 0, a.ranks_per_node);
    hw.ranks_per_node = a.ranks_per_node;
    flag = fmt::format("--ranks-per-node {}", a.ranks_per_node);
  }
  const MeasuredComm* m = hw.measured_for(a.ranks);
  const int measured_nodes =
      m == nullptr ? 0 : (m->ranks_per_node > 0 ? m->ranks_per_node : a.ranks);
  MOE_CHECK_AS(
      "config",
      flag.empty() || m == nullptr || measured_nodes == std::min(a.ranks, hw.ranks_per_node),
      "{}: the profile {} measured {} ranks in nodes of {} (comm.measured); calibrate "
      "on the nodes you predict, or leave the node flag out",
      flag, hw.source, a.ranks, measured_nodes);
}

int run_predict(const PredictArgs& a, int rank) {
  const RunConfig rc = load_run_config(a.config, a.sets);
  const ModelConfig config = load_model_config(rc.model);
  const std::string hw_path = a.hardware.empty() ? default_hardware(rc) : a.hardware;
  MOE_CHECK_AS("config", std::filesystem::exists(hw_path),
               "--hardware: profile '{}' not found (write one with `moe-ep calibrate --out FILE`)",
               hw_path);
  HardwareProfile hw = load_hardware_profile(hw_path);
  apply_node_layout(a, hw);

  CostWorkload w{rc.workload};
  w.threads = static_cast<int>(rc.threads);
  w.kv_bytes = kernels::kv_dtype_bytes(kernels::kv_cache_dtype(rc.backend));
  // The rows' wire types as a run resolves them (the backend's compute dtype unless set).
  const kernels::ComputeDtype compute = rc.compute_dtype.value_or(
      rc.backend == kernels::BackendKind::kCuda ? kernels::ComputeDtype::kBF16
                                                : kernels::ComputeDtype::kF32);
  const parallel::WirePlan wire = parallel::resolve_wire(compute, a.dispatch_dtype);
  const auto element_bytes = [&config](kernels::WireDtype t) {
    return static_cast<double>(kernels::wire::row_bytes(t, config.hidden_size)) /
           static_cast<double>(config.hidden_size);
  };
  w.dispatch_row_bytes = element_bytes(wire.dispatch);
  w.combine_row_bytes = element_bytes(wire.combine);
  w.capacity_rows = rc.backend == kernels::BackendKind::kCuda
                        ? parallel::Dispatcher::kDeviceCapacityRows
                        : parallel::Dispatcher::kHostCapacityRows;
  w.overlap = a.overlap;
  w.exchange = a.exchange;
  const std::string placement_name =
      !a.placement.empty() ? a.placement : (!rc.placement.empty() ? rc.placement : "contiguous");
  const parallel::Placement placement =
      make_cost_placement(placement_name, config, w.routing, w.seed, a.ranks,
                          std::min<int64_t>(4096, w.num_sequences * w.prompt_len));
  CostOptions o;
  o.max_routed_tokens = a.max_routed_tokens;
  CostPrediction p = predict_cost(config, w, placement, hw, o);
  p.placement = placement_name;
  if (rank != 0) return 0;
  fmt::print("model        {} ({} workload: {} sequences x {} prompt tokens, {} decode steps)\n",
             config.name, rc.source, w.num_sequences, w.prompt_len, w.decode_steps);
  fmt::print("{}", p.format());
  if (!a.json.empty()) {
    nlohmann::json j = p.to_json();
    j["model"] = config.name;
    j["config"] = rc.source;
    j["hardware_file"] = hw_path;
    j["workload"] = {{"num_sequences", w.num_sequences},
                     {"prompt_len", w.prompt_len},
                     {"decode_steps", w.decode_steps}};
    write_json(a.json, j);
  }
  return 0;
}

}  // namespace

Command add_predict_command(CLI::App& app, int world_rank) {
  auto a = std::make_shared<PredictArgs>();
  auto* cmd = app.add_subcommand(
      "predict",
      "Predict prefill time and decode step time, per phase, of a run config on N ranks from a "
      "hardware profile (cost model; nothing runs)");
  cmd->add_option("--config", a->config, "Run YAML (configs/bench/*.yaml)")->required();
  cmd->add_option("--ranks", a->ranks, "Ranks to predict for")->required()->check(at_least(1));
  cmd->add_option("--hardware", a->hardware,
                  "Hardware profile YAML (configs/hardware/; default: the shipped profile for "
                  "the run's backend)");
  cmd->add_option("--placement", a->placement,
                  "Placement YAML, or a strategy: contiguous, round_robin, load_balanced, "
                  "replicated[:R], coactivation (fitted on the workload's routing)");
  cmd->add_option("--hostfile", a->hostfile,
                  "Open MPI hostfile the ranks would fill (`host slots=N` lines): nodes of N "
                  "ranks, priced with the profile's intra- and inter-node links");
  cmd->add_option("--ranks-per-node", a->ranks_per_node,
                  "Nodes of G ranks (default: the profile's comm.ranks_per_node)")
      ->check(at_least(1));
  cmd->add_option("--set", a->sets, "Override a key of the run YAML: key=value (repeatable)");
  cmd->add_option("--max-routed-tokens", a->max_routed_tokens,
                  "Tokens routed per layer and step before the routing is sampled")
      ->check(at_least(1));
  add_choice(cmd, "--dispatch-dtype", a->dispatch_dtype, wire_dtype_choices(),
             "Wire type of the dispatched rows, as for run (default: the compute dtype)");
  add_choice(cmd, "--exchange", a->exchange, exchange_choices(),
             "Exchange to price, as for run: flat | hierarchical (node-first). Default: "
             "hierarchical when the ranks span several nodes, else flat");
  add_choice<bool>(cmd, "--overlap", a->overlap, {{"on", true}, {"off", false}},
                   "Price two micro-batches per step, as run --overlap on: on | off (default off)");
  cmd->add_option("--json", a->json, "Also write the prediction as JSON to this file");
  return {cmd, [a, world_rank] { return run_predict(*a, world_rank); }};
}

}  // namespace moe::runtime
