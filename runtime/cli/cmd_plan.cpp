// `moe-ep plan`: parameters, active parameters, FLOPs per token and per-rank memory for N ranks,
// from the config alone (no weights, no collectives; rank 0 prints).
#include <fmt/format.h>

#include <memory>

#include "kernels/common/check.h"
#include "parallel/placement.h"
#include "runtime/analysis/plan.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/model/arithmetic.h"

namespace moe::runtime {
namespace {

struct PlanArgs {
  std::string model, placement, json, backend = "cuda";
  int ranks = 0;
  int64_t batch = 1, context = 4096;
  double gpu_mem_gib = kDefaultGpuMemGib;
};

int run_plan(const PlanArgs& a, int rank) {
  const ModelConfig config = load_model_config(a.model);
  PlanOptions po;
  po.kv_bytes = a.backend == "cpu" ? 4 : 2;
  po.batch = a.batch;
  po.context = a.context;
  po.gpu_mem_gib = a.gpu_mem_gib;
  if (a.ranks > 0) po.ranks = {a.ranks};
  if (!a.placement.empty()) {
    // Expert counts per rank come from the placement, for the one world size it was written for.
    const parallel::PlacementSpec spec = parallel::load_placement_spec(a.placement);
    const int n = spec.num_ranks ? *spec.num_ranks : a.ranks;
    MOE_CHECK_AS("config", n > 0,
                 "{}: say how many ranks the placement is for (key 'ranks' or --ranks)",
                 a.placement);
    const parallel::Placement p = parallel::Placement::build(
        spec, config.moe_layers(), static_cast<int>(config.num_experts), n);
    po.ranks = {n};
    po.expert_slots_per_rank = expert_slots_per_rank(config, p);
    po.placement_name = p.strategy();
  }
  const PlanReport report = make_plan(config, po);
  if (rank == 0) {
    fmt::print("{}", format_plan(report));
    if (!a.json.empty()) write_json(a.json, plan_to_json(report));
  }
  return 0;
}

}  // namespace

Command add_plan_command(CLI::App& app, int world_rank) {
  auto a = std::make_shared<PlanArgs>();
  auto* cmd = app.add_subcommand(
      "plan", "Parameters, active parameters, FLOPs per token and per-rank memory for N ranks");
  cmd->add_option("--model", a->model, "Model YAML, config.json or checkpoint directory")
      ->required();
  cmd->add_option("--ranks", a->ranks, "Only this world size (default: 1, 2, 4, 8)")
      ->check(at_least(1));
  cmd->add_option("--placement", a->placement, "Placement YAML: expert counts per rank");
  cmd->add_option("--batch", a->batch, "Sequences in flight, for the KV cache (default 1)")
      ->check(at_least(1));
  cmd->add_option("--context", a->context,
                  "Tokens per sequence, for the KV cache (default 4096)")
      ->check(at_least(1));
  cmd->add_option("--gpu-mem-gib", a->gpu_mem_gib,
                  fmt::format("GPU memory per rank in GiB (default {:g})", kDefaultGpuMemGib))
      ->check(greater_than(0));
  cmd->add_option("--backend", a->backend,
                  "Backend whose KV cache to size: cuda (bf16, default) | cpu (fp32)")
      ->check(one_of({"cpu", "cuda"}));
  cmd->add_option("--json", a->json, "Also write the plan as JSON to this file");
  return {cmd, [a, world_rank] { return run_plan(*a, world_rank); }};
}

}  // namespace moe::runtime
