// `moe-ep place`: fits a placement strategy on a routing trace (per-layer loads, co-activation),
// writes it as an explicit placement YAML every command reads, and prints per layer and overall
// its balancedness and cross-rank rows per token on that trace, as the runtime would route it.
// No model, no collectives; rank 0 does the work.
#include <fmt/format.h>

#include <memory>

#include "kernels/common/check.h"
#include "parallel/placement_strategies.h"
#include "runtime/analysis/placement_analysis.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/io/config.h"
#include "runtime/io/trace.h"

namespace moe::runtime {
namespace {

struct PlaceArgs {
  std::string trace, out, json, model;
  StrategySpec strategy;
  int ranks = 0;
  int64_t hidden = 0;
  int64_t tokens_per_step = 0;
  bool per_layer = true;
};

int run_place(const PlaceArgs& a, int rank) {
  if (rank != 0) return 0;
  check_strategy(a.strategy, "--strategy");
  const RoutingTrace trace = read_trace(a.trace);
  AnalysisOptions opt;
  opt.tokens_per_step = a.tokens_per_step;
  opt.ranks_per_node = a.strategy.ranks_per_node;
  opt.hidden = a.hidden > 0 ? a.hidden : opt.hidden;
  if (!a.model.empty()) {
    const ModelConfig config = load_model_config(a.model);
    validate_trace(trace, config, a.trace);
    if (a.hidden == 0) opt.hidden = config.hidden_size;
  }
  const auto lists = fit_placement(trace, a.strategy, a.ranks);
  const std::string label = a.strategy.label();
  const parallel::Placement placement = placement_from_lists(lists, trace, a.ranks, label);
  const PlacementReport rep = analyze_placement(trace, placement, opt);
  parallel::write_placement_yaml(
      a.out, a.ranks, lists,
      {fmt::format("moe-ep place: {} on {} ranks, fitted on {} ({} tokens, {} MoE layers)", label,
                   a.ranks, a.trace, rep.num_tokens, rep.layers.size()),
       fmt::format("on that trace: balancedness mean {:.4f} min {:.4f}, cross-rank rows per "
                   "token and layer {:.3f}",
                   rep.mean_balancedness, rep.min_balancedness, rep.cross_rank_rows_per_token())});

  fmt::print(
      "placement {} for {} ranks, fitted on {} ({} tokens, {} MoE layers, {} experts, "
      "top-{})\n",
      label, a.ranks, a.trace, rep.num_tokens, rep.layers.size(), trace.num_experts, trace.top_k);
  fmt::print("as the runtime routes this trace (replica split, once-per-rank dedup):\n");
  if (a.per_layer) {
    fmt::print("{:>6} {:>13} {:>8} {:>22} {:>22}\n", "layer", "balancedness", "max-vio",
               "cross-rank rows/token", "cross-rank pairs/token");
    const double t = static_cast<double>(rep.num_tokens);
    for (size_t i = 0; i < rep.loads.size(); ++i) {
      const parallel::LayerLoad& l = rep.loads[i];
      fmt::print("{:>6} {:>13.4f} {:>8.3f} {:>22.3f} {:>22.3f}\n", rep.layers[i], l.balancedness(),
                 l.max_violation(), l.traffic.rows_sent_remote / t, l.traffic.pairs_remote / t);
    }
  }
  fmt::print(
      "overall: balancedness mean {:.4f} min {:.4f}; max-vio mean {:.3f}; cross-rank rows "
      "per token and layer {:.3f} (without dedup {:.3f})\n",
      rep.mean_balancedness, rep.min_balancedness, rep.mean_max_vio,
      rep.cross_rank_rows_per_token(), rep.cross_rank_pairs_per_token());
  if (rep.nodes.ranks_per_node > 0) {
    fmt::print(
        "nodes of {} ranks: inter-node rows per token and layer {:.3f} flat, {:.3f} node-first "
        "(one per destination node: {:.2f}x fewer)\n",
        rep.nodes.ranks_per_node, rep.inter_node_rows_per_token(false),
        rep.inter_node_rows_per_token(true), rep.nodes.inter_node_dedup());
  }
  fmt::print("wrote {}\n", a.out);
  if (!a.json.empty()) {
    nlohmann::json j = rep.to_json(true);
    j["strategy"] = a.strategy.name;
    j["label"] = label;
    j["redundant"] = a.strategy.redundant;
    j["ranks_per_node"] = a.strategy.ranks_per_node;
    j["trace"] = a.trace;
    j["out"] = a.out;
    j["hidden"] = opt.hidden;
    write_json(a.json, j);
  }
  return 0;
}

}  // namespace

Command add_place_command(CLI::App& app, int world_rank) {
  auto a = std::make_shared<PlaceArgs>();
  auto* cmd = app.add_subcommand(
      "place", "Fit a placement (load_balanced, replicated, coactivation, ...) on a routing trace");
  cmd->add_option("--trace", a->trace, "Routing trace (safetensors, see README)")->required();
  cmd->add_option("--ranks", a->ranks, "World size the placement is for")
      ->required()
      ->check(at_least(1));
  cmd->add_option("--strategy", a->strategy.name,
                  "contiguous | round_robin | load_balanced | replicated | coactivation")
      ->required()
      ->check(one_of(strategy_names()));
  cmd->add_option("--redundant", a->strategy.redundant,
                  "replicated: extra expert slots per layer (default 0)")
      ->check(at_least(0));
  cmd->add_option("--ranks-per-node", a->strategy.ranks_per_node,
                  "Ranks per node: the analysis splits traffic into intra- and inter-node rows "
                  "(flat and node-first exchange); replicated also keeps every replica of an "
                  "expert inside one node")
      ->check(at_least(1));
  cmd->add_option("--min-balancedness", a->strategy.min_balancedness,
                  "coactivation: lowest balancedness it may trade for locality (default 0.9)")
      ->check(greater_than(0));
  cmd->add_option("--out", a->out, "Placement YAML to write (explicit form)")->required();
  cmd->add_option("--model", a->model,
                  "Check the trace against this model (and take its hidden "
                  "size for bytes)");
  cmd->add_option("--tokens-per-step", a->tokens_per_step,
                  "Trace rows per dispatch when analysing (default: all rows in one)")
      ->check(at_least(0));
  cmd->add_option("--hidden", a->hidden,
                  "Hidden size for byte counts (default: the model's, "
                  "else 2048)")
      ->check(at_least(1));
  cmd->add_option("--json", a->json, "Also write the analysis as JSON to this file");
  return {cmd, [a, world_rank] { return run_place(*a, world_rank); }};
}

}  // namespace moe::runtime
