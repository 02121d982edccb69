// Expert placement: strategies (contiguous, round_robin, explicit), the placement YAML parser and
// the invariant checks. A rank's local slots follow the order its list names them; replicas of an
// expert are listed in ascending rank order. Every error names the file (or "<built-in>") and key.
#include "parallel/placement.h"

#include <algorithm>
#include <set>

#include "kernels/common/check.h"
#include "parallel/yaml_util.h"

namespace moe::parallel {
namespace {

// Strategies this build implements. Load-aware ones (load_balanced, replicated) slot in here.
const std::vector<std::string>& known_strategies() {
  static const std::vector<std::string> kKnown = {"contiguous", "round_robin", "explicit"};
  return kKnown;
}

bool is_known_strategy(const std::string& s) {
  const auto& k = known_strategies();
  return std::find(k.begin(), k.end(), s) != k.end();
}

std::string layer_key(int layer) {
  return layer < 0 ? "layers.default" : fmt::format("layers.{}", layer);
}

// Checks one explicit per-rank map against the model and the job; `key` names it in messages.
void check_explicit_map(const PlacementSpec& spec, const std::string& key,
                        const std::vector<std::vector<int>>& map, int num_experts, int num_ranks) {
  MOE_CHECK_AS("placement", static_cast<int>(map.size()) == num_ranks,
               "{}: key '{}': lists experts for {} ranks but the job has {} ranks", spec.source,
               key, map.size(), num_ranks);
  std::vector<int> seen(num_experts, 0);
  for (int r = 0; r < num_ranks; ++r) {
    std::set<int> on_rank;
    for (int e : map[r]) {
      MOE_CHECK_AS("placement", e >= 0 && e < num_experts,
                   "{}: key '{}[{}]': expert {} does not exist (the model has {} experts, 0..{})",
                   spec.source, key, r, e, num_experts, num_experts - 1);
      MOE_CHECK_AS("placement", on_rank.insert(e).second,
                   "{}: key '{}[{}]': expert {} is listed twice for rank {}", spec.source, key, r,
                   e, r);
      ++seen[e];
    }
  }
  std::vector<int> missing;
  for (int e = 0; e < num_experts; ++e) {
    if (seen[e] == 0) missing.push_back(e);
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 8);
    MOE_THROW(
        "placement", "{}: key '{}': {} expert(s) have no slot on any rank: {}{}", spec.source, key,
        missing.size(),
        fmt::join(missing.begin(), missing.begin() + static_cast<std::ptrdiff_t>(shown), ", "),
        missing.size() > shown ? ", ..." : "");
  }
}

// Reads `[[e, ...], [e, ...], ...]` (one list per rank) from a placement file.
std::vector<std::vector<int>> read_rank_lists(const yaml::Doc& doc, const YAML::Node& node,
                                              const std::string& key) {
  if (!node.IsSequence()) {
    yaml::fail(doc, node, key, "expected a list with one list of expert ids per rank");
  }
  std::vector<std::vector<int>> lists;
  for (size_t r = 0; r < node.size(); ++r) {
    std::string elem_key = fmt::format("{}[{}]", key, r);
    std::vector<int64_t> ids = yaml::int_list(doc, node[r], elem_key);
    std::vector<int> rank_list;
    rank_list.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] > (int64_t{1} << 30)) {
        yaml::fail(doc, node[r][i], fmt::format("{}[{}]", elem_key, i),
                   fmt::format("expert id {} is out of range", ids[i]));
      }
      rank_list.push_back(static_cast<int>(ids[i]));
    }
    lists.push_back(std::move(rank_list));
  }
  return lists;
}

}  // namespace

std::vector<std::vector<int>> contiguous_placement(int num_experts, int num_ranks) {
  MOE_CHECK_AS("placement", num_ranks >= 1 && num_experts >= 0,
               "contiguous placement needs >= 1 rank and >= 0 experts (got {} ranks, {} experts)",
               num_ranks, num_experts);
  // The first E % N ranks take one extra expert so shards differ by at most one.
  std::vector<std::vector<int>> lists(num_ranks);
  const int base = num_experts / num_ranks;
  const int extra = num_experts % num_ranks;
  int next = 0;
  for (int r = 0; r < num_ranks; ++r) {
    const int n = base + (r < extra ? 1 : 0);
    for (int i = 0; i < n; ++i) lists[r].push_back(next++);
  }
  return lists;
}

std::vector<std::vector<int>> round_robin_placement(int num_experts, int num_ranks) {
  MOE_CHECK_AS("placement", num_ranks >= 1 && num_experts >= 0,
               "round_robin placement needs >= 1 rank and >= 0 experts (got {} ranks, {} experts)",
               num_ranks, num_experts);
  std::vector<std::vector<int>> lists(num_ranks);
  for (int e = 0; e < num_experts; ++e) lists[e % num_ranks].push_back(e);
  return lists;
}

ReplicaSplit::ReplicaSplit(const LayerPlacement& placement, int rank)
    : placement_(&placement),
      rank_(static_cast<uint32_t>(rank)),
      counter_(static_cast<size_t>(placement.num_experts()), 0) {
  MOE_CHECK_AS("placement", rank >= 0 && rank < std::max(placement.num_ranks(), 1),
               "replica split: rank {} outside a placement of {} ranks", rank,
               placement.num_ranks());
}

LayerPlacement LayerPlacement::from_rank_experts(std::vector<std::vector<int>> rank_experts,
                                                 int num_experts) {
  MOE_CHECK_AS("placement", num_experts >= 0, "negative expert count {}", num_experts);
  LayerPlacement p;
  p.expert_slots.assign(num_experts, {});
  for (int r = 0; r < static_cast<int>(rank_experts.size()); ++r) {
    for (int s = 0; s < static_cast<int>(rank_experts[r].size()); ++s) {
      const int e = rank_experts[r][s];
      MOE_CHECK_AS("placement", e >= 0 && e < num_experts,
                   "rank {} local slot {} names expert {}, outside 0..{}", r, s, e,
                   num_experts - 1);
      p.expert_slots[e].push_back(Slot{r, s});
    }
  }
  p.rank_experts = std::move(rank_experts);
  return p;
}

void LayerPlacement::validate(int expected_experts, int expected_ranks,
                              const std::string& where) const {
  MOE_CHECK_AS("placement", num_experts() == expected_experts,
               "{}: placement has {} experts but the model has {}", where, num_experts(),
               expected_experts);
  MOE_CHECK_AS("placement", num_ranks() == expected_ranks,
               "{}: placement is for {} ranks but the job has {} ranks", where, num_ranks(),
               expected_ranks);
  int64_t num_slots = 0;
  for (int e = 0; e < num_experts(); ++e) {
    MOE_CHECK_AS("placement", !expert_slots[e].empty(), "{}: expert {} has no slot on any rank",
                 where, e);
    for (const Slot& s : expert_slots[e]) {
      MOE_CHECK_AS("placement", s.rank >= 0 && s.rank < num_ranks(),
                   "{}: expert {} is placed on rank {}, but ranks are 0..{}", where, e, s.rank,
                   num_ranks() - 1);
      MOE_CHECK_AS("placement", s.local_slot >= 0 && s.local_slot < num_local_slots(s.rank),
                   "{}: expert {} uses local slot {} of rank {}, which has {} slots", where, e,
                   s.local_slot, s.rank, num_local_slots(s.rank));
      MOE_CHECK_AS("placement", rank_experts[s.rank][s.local_slot] == e,
                   "{}: slot ({}, {}) is claimed by expert {} but holds expert {}", where, s.rank,
                   s.local_slot, e, rank_experts[s.rank][s.local_slot]);
      ++num_slots;
    }
  }
  // Every listed slot must be reached from expert_slots exactly once (dense, one expert each).
  int64_t listed = 0;
  for (int r = 0; r < num_ranks(); ++r) {
    std::set<int> on_rank;
    for (int e : rank_experts[r]) {
      MOE_CHECK_AS("placement", e >= 0 && e < num_experts(),
                   "{}: rank {} lists expert {}, outside 0..{}", where, r, e, num_experts() - 1);
      MOE_CHECK_AS("placement", on_rank.insert(e).second, "{}: rank {} holds expert {} twice",
                   where, r, e);
      ++listed;
    }
  }
  MOE_CHECK_AS("placement", listed == num_slots,
               "{}: {} slots are listed per rank but experts reference {}", where, listed,
               num_slots);
}

PlacementSpec load_placement_spec(const std::string& path) {
  yaml::Doc doc = yaml::load(path);
  yaml::reject_unknown_keys(doc, doc.root, {"strategy", "ranks", "layers"});
  PlacementSpec spec;
  spec.source = path;
  spec.strategy = yaml::require<std::string>(doc, doc.root, "strategy");
  if (!is_known_strategy(spec.strategy)) {
    yaml::fail(doc, doc.root["strategy"], "strategy",
               fmt::format("unknown strategy '{}' (known: {})", spec.strategy,
                           fmt::join(known_strategies(), ", ")));
  }
  if (auto ranks = yaml::optional<int64_t>(doc, doc.root, "ranks")) {
    if (*ranks < 1 || *ranks > (int64_t{1} << 20)) {
      yaml::fail(doc, doc.root["ranks"], "ranks",
                 fmt::format("expected a positive number of ranks, got {}", *ranks));
    }
    spec.num_ranks = static_cast<int>(*ranks);
  }
  YAML::Node layers = doc.root["layers"];
  const bool has_layers = layers.IsDefined() && !layers.IsNull();
  if (spec.strategy != "explicit") {
    if (has_layers) {
      yaml::fail(doc, layers, "layers",
                 fmt::format("per-layer maps are only read with strategy 'explicit' (this file "
                             "says '{}')",
                             spec.strategy));
    }
    return spec;
  }
  if (!has_layers) yaml::fail(doc, doc.root, "layers", "strategy 'explicit' needs a 'layers' map");
  if (!layers.IsMap()) {
    yaml::fail(doc, layers, "layers",
               "expected a mapping from a layer index (or 'default') to per-rank expert lists");
  }
  std::set<int> seen_layers;
  for (auto it = layers.begin(); it != layers.end(); ++it) {
    const std::string name = it->first.IsScalar() ? it->first.Scalar() : "?";
    if (name == "default") {
      if (spec.default_layer) yaml::fail(doc, it->first, "layers.default", "given twice");
      spec.default_layer = read_rank_lists(doc, it->second, "layers.default");
      continue;
    }
    const int64_t layer = yaml::as<int64_t>(doc, it->first, fmt::format("layers.{}", name));
    if (layer < 0 || layer > (int64_t{1} << 20)) {
      yaml::fail(doc, it->first, fmt::format("layers.{}", name),
                 "a layer index must be a non-negative integer or 'default'");
    }
    if (!seen_layers.insert(static_cast<int>(layer)).second) {
      yaml::fail(doc, it->first, fmt::format("layers.{}", layer), "layer given twice");
    }
    spec.layers.emplace_back(static_cast<int>(layer),
                             read_rank_lists(doc, it->second, fmt::format("layers.{}", layer)));
  }
  if (!spec.default_layer && spec.layers.empty()) {
    yaml::fail(doc, layers, "layers", "no layer maps given (add 'default' or layer indices)");
  }
  // Per-rank list counts are known here: fail early when they disagree with `ranks`.
  if (spec.num_ranks) {
    auto check_count = [&](const std::vector<std::vector<int>>& map, const std::string& key) {
      if (static_cast<int>(map.size()) != *spec.num_ranks) {
        yaml::fail(doc, layers, key,
                   fmt::format("lists experts for {} ranks but key 'ranks' says {}", map.size(),
                               *spec.num_ranks));
      }
    };
    if (spec.default_layer) check_count(*spec.default_layer, "layers.default");
    for (const auto& [l, map] : spec.layers) check_count(map, layer_key(l));
  }
  return spec;
}

Placement Placement::build(const PlacementSpec& spec, const std::vector<bool>& layer_is_moe,
                           int num_experts, int num_ranks) {
  MOE_CHECK_AS("placement", num_ranks >= 1, "{}: the job needs at least one rank (got {})",
               spec.source, num_ranks);
  MOE_CHECK_AS("placement", is_known_strategy(spec.strategy),
               "{}: key 'strategy': unknown strategy '{}' (known: {})", spec.source, spec.strategy,
               fmt::join(known_strategies(), ", "));
  if (spec.num_ranks) {
    MOE_CHECK_AS("placement", *spec.num_ranks == num_ranks,
                 "{}: key 'ranks': written for {} ranks but the job has {} ranks", spec.source,
                 *spec.num_ranks, num_ranks);
  }
  const bool any_moe =
      std::find(layer_is_moe.begin(), layer_is_moe.end(), true) != layer_is_moe.end();
  MOE_CHECK_AS("placement", !any_moe || num_experts >= 1,
               "{}: the model has MoE layers but {} experts", spec.source, num_experts);
  const int num_layers = static_cast<int>(layer_is_moe.size());

  // Explicit maps: check that every named layer exists and is a MoE layer.
  std::vector<const std::vector<std::vector<int>>*> explicit_maps(num_layers, nullptr);
  if (spec.strategy == "explicit") {
    MOE_CHECK_AS("placement", spec.default_layer || !spec.layers.empty(),
                 "{}: strategy 'explicit' without any layer map", spec.source);
    for (const auto& [l, map] : spec.layers) {
      MOE_CHECK_AS("placement", l >= 0 && l < num_layers,
                   "{}: key '{}': the model has layers 0..{}", spec.source, layer_key(l),
                   num_layers - 1);
      MOE_CHECK_AS("placement", layer_is_moe[l],
                   "{}: key '{}': layer {} is a dense layer (no experts to place)", spec.source,
                   layer_key(l), l);
      MOE_CHECK_AS("placement", explicit_maps[l] == nullptr, "{}: key '{}': layer given twice",
                   spec.source, layer_key(l));
      explicit_maps[l] = &map;
    }
    if (spec.default_layer) {
      check_explicit_map(spec, "layers.default", *spec.default_layer, num_experts, num_ranks);
    }
    for (const auto& [l, map] : spec.layers) {
      check_explicit_map(spec, layer_key(l), map, num_experts, num_ranks);
    }
  }

  Placement p;
  p.num_ranks_ = num_ranks;
  p.num_experts_ = num_experts;
  p.strategy_ = spec.strategy;
  p.layers_.reserve(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    if (!layer_is_moe[l]) {
      LayerPlacement dense;
      dense.rank_experts.assign(num_ranks, {});
      p.layers_.push_back(std::move(dense));
      continue;
    }
    std::vector<std::vector<int>> lists;
    if (spec.strategy == "contiguous") {
      lists = contiguous_placement(num_experts, num_ranks);
    } else if (spec.strategy == "round_robin") {
      lists = round_robin_placement(num_experts, num_ranks);
    } else {  // explicit
      if (explicit_maps[l] != nullptr) {
        lists = *explicit_maps[l];
      } else {
        MOE_CHECK_AS("placement", spec.default_layer.has_value(),
                     "{}: key 'layers': MoE layer {} has no map and there is no 'default'",
                     spec.source, l);
        lists = *spec.default_layer;
      }
    }
    LayerPlacement lp = LayerPlacement::from_rank_experts(std::move(lists), num_experts);
    lp.validate(num_experts, num_ranks, fmt::format("{} (layer {})", spec.source, l));
    p.layers_.push_back(std::move(lp));
  }
  return p;
}

}  // namespace moe::parallel
