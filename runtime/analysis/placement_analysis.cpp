// Placement analysis: the dispatcher's routing (ReplicaSplit + once-per-rank dedup) replayed for
// every rank at once over a trace, one pass per layer; and strategy fitting from a trace's loads
// and co-activation. Counts equal what build_dispatch_layout gives rank by rank (tested).
#include "runtime/analysis/placement_analysis.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "kernels/common/check.h"
#include "parallel/dispatcher.h"
#include "parallel/node_layout.h"

namespace moe::runtime {
namespace {

// Job-wide counts of one layer over all batches.
struct LayerCounter {
  std::vector<int64_t> pairs_per_expert, pairs_per_rank, rows_per_rank;
  int64_t rows_remote = 0, rows_local = 0, pairs_remote = 0;
  NodeTraffic nodes;
};

// One token's destination ranks (deduplicated, `dests`) counted by link for both exchanges; the
// token lives on `src`, nodes hold g ranks.
void count_node_rows(int src, const std::vector<int>& dests, int g, NodeTraffic& x) {
  const int src_node = src / g;
  for (size_t i = 0; i < dests.size(); ++i) {
    const int d = dests[i];
    if (d == src) continue;
    const int node = d / g;
    if (node == src_node) {
      ++x.flat_intra_rows;
      ++x.node_first_intra_rows;
      continue;
    }
    ++x.flat_inter_rows;
    const int proxy = node * g + src % g;  // where the node's one copy lands
    bool first_of_node = true;
    for (size_t j = 0; j < i; ++j) first_of_node = first_of_node && dests[j] / g != node;
    if (first_of_node) ++x.node_first_inter_rows;
    if (d != proxy) ++x.node_first_intra_rows;
  }
}

void count_layer(const int32_t* ids, int64_t num_tokens, int top_k,
                 const parallel::LayerPlacement& lp, const AnalysisOptions& o, LayerCounter& c) {
  const int n = lp.num_ranks();
  const int g = o.ranks_per_node > 0 ? o.ranks_per_node : n;
  const int64_t tokens_per_step = o.tokens_per_step;
  const int num_experts = lp.num_experts();
  c = LayerCounter{};
  c.pairs_per_expert.assign(static_cast<size_t>(num_experts), 0);
  c.pairs_per_rank.assign(static_cast<size_t>(n), 0);
  c.rows_per_rank.assign(static_cast<size_t>(n), 0);
  std::vector<int64_t> stamp(static_cast<size_t>(n), -1);  // last token sent to each rank
  const int64_t batch = tokens_per_step > 0 ? tokens_per_step : std::max<int64_t>(num_tokens, 1);
  std::vector<parallel::ReplicaSplit> split;
  std::vector<int> dests;
  for (int64_t begin = 0; begin < num_tokens; begin += batch) {
    const int64_t end = std::min(num_tokens, begin + batch);
    split.clear();  // a new dispatch: every rank's counters restart
    for (int r = 0; r < n; ++r) split.emplace_back(lp, r);
    int src = 0;  // (t - begin) mod n, kept incrementally
    for (int64_t t = begin; t < end; ++t) {
      const int32_t* row = ids + t * top_k;
      parallel::ReplicaSplit& s = split[static_cast<size_t>(src)];
      dests.clear();
      for (int j = 0; j < top_k; ++j) {
        const int32_t e = row[j];
        MOE_CHECK_AS("placement", e >= 0 && e < num_experts,
                     "analysis: token {} routes to expert {}, but the placement has experts 0..{}",
                     t, e, num_experts - 1);
        const int d = s.next(e).rank;
        ++c.pairs_per_expert[static_cast<size_t>(e)];
        ++c.pairs_per_rank[static_cast<size_t>(d)];
        if (d != src) ++c.pairs_remote;
        if (stamp[static_cast<size_t>(d)] != t) {
          stamp[static_cast<size_t>(d)] = t;
          ++c.rows_per_rank[static_cast<size_t>(d)];
          dests.push_back(d);
          if (d == src) {
            ++c.rows_local;
          } else {
            ++c.rows_remote;
          }
        }
      }
      count_node_rows(src, dests, g, c.nodes);
      if (++src == n) src = 0;
    }
  }
}

}  // namespace

double NodeTraffic::inter_node_dedup() const {
  return node_first_inter_rows > 0
             ? static_cast<double>(flat_inter_rows) / static_cast<double>(node_first_inter_rows)
             : 1.0;
}

NodeTraffic& NodeTraffic::operator+=(const NodeTraffic& o) {
  flat_inter_rows += o.flat_inter_rows;
  flat_intra_rows += o.flat_intra_rows;
  node_first_inter_rows += o.node_first_inter_rows;
  node_first_intra_rows += o.node_first_intra_rows;
  return *this;
}

double PlacementReport::cross_rank_rows_per_token() const {
  const double denom = static_cast<double>(num_tokens) * static_cast<double>(loads.size());
  return denom > 0 ? static_cast<double>(traffic.rows_sent_remote) / denom : 0.0;
}

double PlacementReport::cross_rank_pairs_per_token() const {
  const double denom = static_cast<double>(num_tokens) * static_cast<double>(loads.size());
  return denom > 0 ? static_cast<double>(traffic.pairs_remote) / denom : 0.0;
}

double PlacementReport::inter_node_rows_per_token(bool node_first) const {
  const double denom = static_cast<double>(num_tokens) * static_cast<double>(loads.size());
  const int64_t rows = node_first ? nodes.node_first_inter_rows : nodes.flat_inter_rows;
  return denom > 0 ? static_cast<double>(rows) / denom : 0.0;
}

nlohmann::json PlacementReport::to_json(bool per_layer) const {
  const parallel::ExchangeStats& x = traffic;
  nlohmann::json j = {{"ranks", num_ranks},
                      {"tokens", num_tokens},
                      {"moe_layers", loads.size()},
                      {"mean_balancedness", mean_balancedness},
                      {"min_balancedness", min_balancedness},
                      {"mean_max_vio", mean_max_vio},
                      {"worst_max_vio", worst_max_vio},
                      {"cross_rank_rows_per_token", cross_rank_rows_per_token()},
                      {"cross_rank_pairs_per_token", cross_rank_pairs_per_token()},
                      {"rows_sent_remote", x.rows_sent_remote},
                      {"rows_kept_local", x.rows_kept_local},
                      {"pairs_remote", x.pairs_remote},
                      {"bytes_sent_remote", x.bytes_sent_remote},
                      {"bytes_kept_local", x.bytes_kept_local},
                      {"bytes_remote_without_dedup", x.bytes_remote_without_dedup},
                      {"pairs_per_rank", pairs_per_rank}};
  j["nodes"] = {{"ranks_per_node", nodes.ranks_per_node > 0 ? nodes.ranks_per_node : num_ranks},
                {"flat",
                 {{"inter_node_rows", nodes.flat_inter_rows},
                  {"intra_node_rows", nodes.flat_intra_rows},
                  {"inter_node_rows_per_token", inter_node_rows_per_token(false)}}},
                {"node_first",
                 {{"inter_node_rows", nodes.node_first_inter_rows},
                  {"intra_node_rows", nodes.node_first_intra_rows},
                  {"inter_node_rows_per_token", inter_node_rows_per_token(true)}}},
                {"inter_node_dedup", nodes.inter_node_dedup()}};
  if (per_layer) {
    nlohmann::json layers_json = nlohmann::json::array();
    for (size_t i = 0; i < loads.size(); ++i) {
      const parallel::LayerLoad& l = loads[i];
      const double t = num_tokens > 0 ? static_cast<double>(num_tokens) : 1.0;
      layers_json.push_back({{"layer", layers[i]},
                             {"balancedness", l.balancedness()},
                             {"max_vio", l.max_violation()},
                             {"cross_rank_rows_per_token", l.traffic.rows_sent_remote / t},
                             {"cross_rank_pairs_per_token", l.traffic.pairs_remote / t},
                             {"bytes_sent_remote", l.traffic.bytes_sent_remote},
                             {"tokens_per_rank", l.tokens_per_rank},
                             {"rows_per_rank", l.rows_per_rank}});
    }
    j["layers"] = std::move(layers_json);
  }
  return j;
}

PlacementReport analyze_placement(const RoutingTrace& trace, const parallel::Placement& placement,
                                  const AnalysisOptions& options) {
  check_trace(trace, "<analysis trace>");
  MOE_CHECK_AS("placement", placement.num_experts() == trace.num_experts,
               "analysis: the placement has {} experts but the routing has {}",
               placement.num_experts(), trace.num_experts);
  MOE_CHECK_AS("placement", options.hidden >= 1 && options.tokens_per_step >= 0,
               "analysis: hidden must be >= 1 and tokens_per_step >= 0 (got {}, {})",
               options.hidden, options.tokens_per_step);
  const int top_k = static_cast<int>(trace.top_k);
  const int64_t row_bytes = options.hidden * static_cast<int64_t>(sizeof(float));
  const int64_t routes_bytes = top_k * static_cast<int64_t>(sizeof(parallel::RouteEntry));
  // Per row on another rank: dispatch sends the row and its routes, combine returns one row.
  const int64_t row_trip_bytes = 2 * row_bytes + routes_bytes;
  const int64_t pair_trip_bytes =
      2 * row_bytes + static_cast<int64_t>(sizeof(parallel::RouteEntry));

  PlacementReport rep;
  rep.num_ranks = placement.num_ranks();
  // Nodes of G >= N ranks are one node (as the replicated strategy reads G).
  AnalysisOptions o = options;
  if (o.ranks_per_node >= rep.num_ranks) o.ranks_per_node = 0;
  if (o.ranks_per_node > 0) {
    parallel::node_layout_for_ranks_per_node(rep.num_ranks, 0, o.ranks_per_node);
  }
  rep.nodes.ranks_per_node = o.ranks_per_node;
  rep.num_tokens = trace.num_tokens(0);
  rep.pairs_per_rank.assign(static_cast<size_t>(rep.num_ranks), 0);
  double sum_bal = 0, sum_vio = 0;
  LayerCounter c;
  for (size_t i = 0; i < trace.layers.size(); ++i) {
    const int layer = static_cast<int>(trace.layers[i]);
    MOE_CHECK_AS("placement", layer < placement.num_layers(),
                 "analysis: the routing has layer {} but the placement has {} layers", layer,
                 placement.num_layers());
    const parallel::LayerPlacement& lp = placement.layer(layer);
    MOE_CHECK_AS("placement", lp.num_experts() == trace.num_experts,
                 "analysis: layer {} of the placement has no experts", layer);
    count_layer(trace.ids[i].data(), rep.num_tokens, top_k, lp, o, c);
    rep.nodes += c.nodes;
    parallel::LayerLoad load;
    load.tokens_per_expert = c.pairs_per_expert;
    load.tokens_per_rank = c.pairs_per_rank;
    load.rows_per_rank = c.rows_per_rank;
    int64_t pairs = 0;
    for (int64_t v : c.pairs_per_rank) pairs += v;
    parallel::ExchangeStats& x = load.traffic;
    x.rows_sent_remote = c.rows_remote;
    x.rows_kept_local = c.rows_local;
    x.pairs_remote = c.pairs_remote;
    x.rows_received = c.rows_remote + c.rows_local;
    x.bytes_sent_remote = c.rows_remote * row_trip_bytes;
    x.bytes_kept_local = c.rows_local * row_trip_bytes;
    x.bytes_remote_without_dedup = c.pairs_remote * pair_trip_bytes;
    x.pairs_received = pairs;
    rep.traffic += x;
    for (size_t r = 0; r < rep.pairs_per_rank.size(); ++r) {
      rep.pairs_per_rank[r] += c.pairs_per_rank[r];
    }
    const double bal = load.balancedness(), vio = load.max_violation();
    sum_bal += bal;
    sum_vio += vio;
    rep.min_balancedness = std::min(rep.min_balancedness, bal);
    rep.worst_max_vio = std::max(rep.worst_max_vio, vio);
    rep.layers.push_back(layer);
    rep.loads.push_back(std::move(load));
  }
  const double n_layers = static_cast<double>(rep.loads.size());
  rep.mean_balancedness = sum_bal / n_layers;
  rep.mean_max_vio = sum_vio / n_layers;
  return rep;
}

const std::vector<std::string>& strategy_names() {
  static const std::vector<std::string> kNames = {"contiguous", "round_robin", "load_balanced",
                                                  "replicated", "coactivation"};
  return kNames;
}

std::string StrategySpec::label() const {
  if (name == "replicated") {
    return ranks_per_node > 0 ? fmt::format("replicated(R={},G={})", redundant, ranks_per_node)
                              : fmt::format("replicated(R={})", redundant);
  }
  if (name == "coactivation") return fmt::format("coactivation(b>={:g})", min_balancedness);
  return name;
}

void check_strategy(const StrategySpec& s, const std::string& where) {
  const auto& names = strategy_names();
  MOE_CHECK_AS("config", std::find(names.begin(), names.end(), s.name) != names.end(),
               "{}: unknown strategy '{}' (known: {})", where, s.name, fmt::join(names, ", "));
  MOE_CHECK_AS("config", s.redundant >= 0, "{}: redundant slots must be >= 0, got {}", where,
               s.redundant);
  MOE_CHECK_AS("config", s.redundant == 0 || s.name == "replicated",
               "{}: redundant slots ({}) need strategy 'replicated', not '{}'", where, s.redundant,
               s.name);
  MOE_CHECK_AS("config", s.ranks_per_node >= 0, "{}: ranks per node must be >= 0, got {}", where,
               s.ranks_per_node);
  MOE_CHECK_AS("config", s.min_balancedness > 0 && s.min_balancedness <= 1,
               "{}: the balancedness bound must be in (0, 1], got {}", where, s.min_balancedness);
}

std::vector<std::pair<int, parallel::RankLists>> fit_placement(const RoutingTrace& trace,
                                                               const StrategySpec& strategy,
                                                               int num_ranks) {
  check_strategy(strategy, "placement strategy");
  MOE_CHECK_AS("placement", num_ranks >= 1, "fit: needs >= 1 rank, got {}", num_ranks);
  const int num_experts = static_cast<int>(trace.num_experts);
  const int top_k = static_cast<int>(trace.top_k);
  std::vector<std::pair<int, parallel::RankLists>> out;
  for (size_t i = 0; i < trace.layers.size(); ++i) {
    const int layer = static_cast<int>(trace.layers[i]);
    const std::vector<int32_t>& ids = trace.ids[i];
    std::vector<double> load(static_cast<size_t>(num_experts), 0.0);
    for (int32_t e : ids) {
      MOE_CHECK_AS("placement", e >= 0 && e < num_experts,
                   "fit: layer {} routes to expert {}, outside 0..{}", layer, e, num_experts - 1);
      load[static_cast<size_t>(e)] += 1.0;
    }
    parallel::RankLists lists;
    if (strategy.name == "contiguous") {
      lists = parallel::contiguous_placement(num_experts, num_ranks);
    } else if (strategy.name == "round_robin") {
      lists = parallel::round_robin_placement(num_experts, num_ranks);
    } else if (strategy.name == "load_balanced") {
      lists = parallel::load_balanced_placement(load, num_ranks);
    } else if (strategy.name == "replicated") {
      lists = parallel::replicated_placement(load, num_ranks, strategy.redundant,
                                             strategy.ranks_per_node);
    } else {
      parallel::Coactivation co;
      co.num_experts = num_experts;
      parallel::add_coactivation(co, ids, top_k);
      lists = parallel::coactivation_placement(load, co, num_ranks, strategy.min_balancedness);
    }
    out.emplace_back(layer, std::move(lists));
  }
  return out;
}

parallel::Placement placement_from_lists(
    const std::vector<std::pair<int, parallel::RankLists>>& lists, const RoutingTrace& trace,
    int num_ranks, const std::string& source) {
  parallel::PlacementSpec spec;
  spec.strategy = "explicit";
  spec.num_ranks = num_ranks;
  spec.source = source;
  spec.layers = lists;
  std::vector<bool> is_moe(static_cast<size_t>(trace.num_layers), false);
  for (int64_t l : trace.layers) is_moe.at(static_cast<size_t>(l)) = true;
  return parallel::Placement::build(spec, is_moe, static_cast<int>(trace.num_experts), num_ranks);
}

}  // namespace moe::runtime
