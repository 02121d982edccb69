// `moe-ep plan`: parameters, active parameters, FLOPs per token and per-rank memory for N ranks,
// from the config alone (no weights, no collectives; rank 0 prints); --weights-dtype sizes the
// weights as bf16 or FP8 whatever the checkpoint stores.
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
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

// `--weights-dtype`: the checkpoint's own (config.json's quantization_config), or what if.
enum class WeightsDtype { kAsStored, kBf16, kFp8 };

struct PlanArgs {
  std::string model, placement, json, plot;
  kernels::BackendKind backend = kernels::BackendKind::kCuda;
  int ranks = 0;
  int ranks_per_node = 0;
  int64_t batch = 1, context = 4096;
  double gpu_mem_gib = kDefaultGpuMemGib;
  WeightsDtype weights = WeightsDtype::kAsStored;
};

// The plotting script: bench/plot_plan.py under the working directory, else beside the source
// tree the executable was built in (build/<dir>/launch/moe-ep -> ../../../bench).
std::string plot_script() {
  namespace fs = std::filesystem;
  const fs::path here = fs::path("bench") / "plot_plan.py";
  if (fs::exists(here)) return here.string();
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path() / ".." / ".." / ".." / "bench" / "plot_plan.py";
    if (fs::exists(beside)) return beside.string();
  }
  MOE_THROW("config", "--plot: bench/plot_plan.py not found (run from the repository root)");
}

// `plan --plot FILE.png`: the plan for ranks 1..128 as JSON beside FILE, drawn by
// bench/plot_plan.py with Debian's python3 (matplotlib), MOE_EP_PYTHON to override.
void draw_plan(const PlanArgs& a, const ModelConfig& config, PlanOptions po) {
  if (po.expert_slots_per_rank.empty() && a.ranks == 0) po.ranks = {1, 2, 4, 8, 16, 32, 64, 128};
  const std::string json = a.plot + ".json";
  write_json(json, plan_to_json(make_plan(config, po)));
  const char* env = std::getenv("MOE_EP_PYTHON");
  const std::string python = env != nullptr && *env != '\0' ? env : "/usr/bin/python3";
  const std::string cmd = fmt::format("'{}' '{}' '{}' '{}'", python, plot_script(), json, a.plot);
  MOE_CHECK_AS("io", std::system(cmd.c_str()) == 0, "--plot: `{}` failed", cmd);
  fmt::print("plot         {} (data: {})\n", a.plot, json);
}

int run_plan(const PlanArgs& a, int rank) {
  ModelConfig config = load_model_config(a.model);
  if (a.weights == WeightsDtype::kBf16) config.quantization = WeightQuantization();
  if (a.weights == WeightsDtype::kFp8 && !config.quantization.fp8) {
    config.quantization = WeightQuantization::published_fp8();
  }
  PlanOptions po;
  po.kv_bytes = kernels::kv_dtype_bytes(kernels::kv_cache_dtype(a.backend));
  po.batch = a.batch;
  po.context = a.context;
  po.gpu_mem_gib = a.gpu_mem_gib;
  po.ranks_per_node = a.ranks_per_node;
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
    if (!a.plot.empty()) draw_plan(a, config, po);
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
  cmd->add_option("--ranks-per-node", a->ranks_per_node,
                  "Nodes of this many ranks exchanging node-first (the default across nodes): "
                  "count the second exchange level's buffers too")
      ->check(at_least(1));
  cmd->add_option("--batch", a->batch, "Sequences in flight, for the KV cache (default 1)")
      ->check(at_least(1));
  cmd->add_option("--context", a->context, "Tokens per sequence, for the KV cache (default 4096)")
      ->check(at_least(1));
  cmd->add_option("--gpu-mem-gib", a->gpu_mem_gib,
                  fmt::format("GPU memory per rank in GiB (default {:g})", kDefaultGpuMemGib))
      ->check(greater_than(0));
  add_choice(cmd, "--backend", a->backend, backend_choices(),
             "Backend whose KV cache to size: cuda (bf16, default) | cpu (fp32)");
  add_choice<WeightsDtype>(
      cmd, "--weights-dtype", a->weights,
      {{"bf16", WeightsDtype::kBf16}, {"fp8", WeightsDtype::kFp8}},
      "Size the weights as if stored bf16 | fp8 (e4m3 + 128 x 128 block scales, as the "
      "published FP8 checkpoints; default: as the config's quantization_config says)");
  cmd->add_option("--json", a->json, "Also write the plan as JSON to this file");
  cmd->add_option("--plot", a->plot,
                  "Draw memory held vs parameters active per token (top-k 1-16) and per-rank "
                  "memory vs N as a PNG (bench/plot_plan.py, matplotlib)");
  return {cmd, [a, world_rank] { return run_plan(*a, world_rank); }};
}

}  // namespace moe::runtime
