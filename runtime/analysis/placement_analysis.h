// Placement analysis without the model: replays routing (a RoutingTrace) against a placement for
// any rank count and counts what the runtime would move, exactly as the dispatcher routes it (the
// same ReplicaSplit, the same once-per-rank dedup, the same byte counts as ExchangeStats); and
// fitting of the load-aware strategies (parallel/placement_strategies.h) on a trace.
//
// Token -> rank map: trace rows are consumed in batches of `tokens_per_step` rows (0: the whole
// trace is one batch), one dispatch per layer and batch; inside a batch, row i is sequence i, so
// it lives on rank i mod N as the i / N-th token of that rank (the runtime's "sequence i on rank
// i mod N" with one token per sequence). Counters of the split rule restart with every batch, as
// they do with every dispatch.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "parallel/load_stats.h"
#include "parallel/placement.h"
#include "parallel/placement_strategies.h"
#include "runtime/io/trace.h"

namespace moe::runtime {

struct AnalysisOptions {
  int64_t hidden = 2048;        // hidden size: a row is hidden x 4 bytes (fp32, as exchanged)
  int64_t tokens_per_step = 0;  // rows per dispatch (0: all rows in one)
  int ranks_per_node = 0;       // nodes of G consecutive ranks for the node split (0: one node)
};

// Rows that leave their rank, split by link, for the two exchanges. Flat: one row per
// destination rank (what the dispatcher sends today). Node-first: one row per destination node
// crosses to the rank of the same local index there (dedup per node), then one row per further
// rank inside that node; rows for ranks of the sender's own node go directly, as in flat.
struct NodeTraffic {
  int ranks_per_node = 0;  // 0: every rank on one node
  int64_t flat_inter_rows = 0, flat_intra_rows = 0;
  int64_t node_first_inter_rows = 0, node_first_intra_rows = 0;
  // Inter-node rows of the flat exchange over those of the node-first one (1 when none cross).
  double inter_node_dedup() const;
  NodeTraffic& operator+=(const NodeTraffic& o);
};

// What one placement does to one routing, summed over ranks (the job-wide view a run reports).
struct PlacementReport {
  int num_ranks = 1;
  int64_t num_tokens = 0;       // rows per layer
  std::vector<int64_t> layers;  // MoE layer index of each entry of `loads`
  std::vector<parallel::LayerLoad> loads;
  parallel::ExchangeStats traffic;      // summed over layers
  NodeTraffic nodes;                    // summed over layers
  std::vector<int64_t> pairs_per_rank;  // [N] summed over layers
  double mean_balancedness = 1.0, min_balancedness = 1.0;
  double mean_max_vio = 0.0, worst_max_vio = 0.0;

  // Cross-rank rows (deduplicated sends to other ranks) per token and MoE layer.
  double cross_rank_rows_per_token() const;
  // Same, one row per (token, expert) pair on another rank (no dedup).
  double cross_rank_pairs_per_token() const;
  // Rows crossing to another node per token and MoE layer: flat, or node-first.
  double inter_node_rows_per_token(bool node_first) const;
  // Summary (balance, rows and bytes, per-rank pairs); per_layer adds one entry per layer.
  nlohmann::json to_json(bool per_layer) const;
};

// Replays `trace` against `placement` (built for the trace's layers, any rank count). Throws
// moe::Error("placement") when the two disagree (expert count, a layer without experts).
PlacementReport analyze_placement(const RoutingTrace& trace, const parallel::Placement& placement,
                                  const AnalysisOptions& options = {});

// Which strategy, with what parameters. Names: contiguous, round_robin, load_balanced,
// replicated, coactivation.
struct StrategySpec {
  std::string name = "contiguous";
  int redundant = 0;  // replicated: extra slots per layer
  // Nodes of G ranks: the analysis splits traffic by node, and replicated keeps every replica of
  // an expert inside one node (the hierarchical variant). 0: one node.
  int ranks_per_node = 0;
  double min_balancedness = 0.9;  // coactivation: bound on the fitted balancedness
  std::string label() const;      // "replicated(R=8)", ...
};
const std::vector<std::string>& strategy_names();
// Throws moe::Error("config") naming `where` for unknown names or bad parameters.
void check_strategy(const StrategySpec& s, const std::string& where);

// Per-layer expert lists of `strategy` for num_ranks ranks, fitted on `trace` (loads = pairs per
// expert; co-activation = pairs of experts chosen by one token). One entry per trace layer.
std::vector<std::pair<int, parallel::RankLists>> fit_placement(const RoutingTrace& trace,
                                                               const StrategySpec& strategy,
                                                               int num_ranks);

// A Placement from per-layer lists (explicit form) for a model shaped like `trace`.
parallel::Placement placement_from_lists(
    const std::vector<std::pair<int, parallel::RankLists>>& lists, const RoutingTrace& trace,
    int num_ranks, const std::string& source);

}  // namespace moe::runtime
