// Load-aware placement strategies (load_balanced, replicated with its hierarchical variant,
// coactivation) and the explicit-YAML writer. Deterministic: ties break towards the lower rank
// and the lower expert id, so the same profile always gives the same placement.
#include "parallel/placement_strategies.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "kernels/common/check.h"

namespace moe::parallel {
namespace {

struct Item {
  int expert = 0;
  double load = 0;
};

// Slot count per rank: `slots` spread as evenly as possible, the first (slots % n) ranks one more.
std::vector<int> even_capacity(int slots, int n) {
  std::vector<int> cap(static_cast<size_t>(n), slots / n);
  for (int r = 0; r < slots % n; ++r) ++cap[static_cast<size_t>(r)];
  return cap;
}

void check_loads(std::span<const double> load, const char* who) {
  MOE_CHECK_AS("placement", !load.empty(), "{}: the load profile has no experts", who);
  for (size_t e = 0; e < load.size(); ++e) {
    MOE_CHECK_AS("placement", load[e] >= 0 && std::isfinite(load[e]),
                 "{}: expert {} has load {}, expected a finite value >= 0", who, e, load[e]);
  }
}

// Heaviest item first onto the rank with the lowest load among ranks with a free slot that do
// not hold the item's expert yet (ties: lower rank). Items of equal load go in expert order.
// Slots: every rank holds floor(items / n) items, and (items % n) ranks one more; which ranks
// take the extra slot is decided as the packing goes (the lightest), not fixed in advance.
RankLists pack(std::vector<Item> items, int n, int num_experts) {
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.load != b.load ? a.load > b.load : a.expert < b.expert;
  });
  const int lo = static_cast<int>(items.size()) / n;
  int extra_left = static_cast<int>(items.size()) % n;  // ranks that may still grow to lo + 1
  std::vector<int> capacity(static_cast<size_t>(n), lo + (extra_left > 0 ? 1 : 0));
  auto take_slot = [&](int r, std::vector<std::vector<int>>& lists) {
    if (static_cast<int>(lists[r].size()) == lo && extra_left > 0 && --extra_left == 0) {
      // The last extra slot is taken: ranks still at lo stop there.
      for (int q = 0; q < n; ++q) {
        if (q != r && static_cast<int>(lists[q].size()) <= lo) capacity[q] = lo;
      }
    }
  };
  RankLists lists(static_cast<size_t>(n));
  std::vector<double> rank_load(static_cast<size_t>(n), 0.0);
  std::vector<char> holds(static_cast<size_t>(n) * num_experts, 0);
  auto has = [&](int r, int e) -> char& { return holds[static_cast<size_t>(r) * num_experts + e]; };
  for (const Item& it : items) {
    int best = -1;
    for (int r = 0; r < n; ++r) {
      if (static_cast<int>(lists[r].size()) >= capacity[r] || has(r, it.expert)) continue;
      if (best < 0 || rank_load[r] < rank_load[best]) best = r;
    }
    if (best < 0) {
      // Only ranks that already hold this expert have room: move another expert x from a rank q
      // without this expert to such a rank p, and put this replica on q.
      for (int p = 0; p < n && best < 0; ++p) {
        if (static_cast<int>(lists[p].size()) >= capacity[p]) continue;
        for (int q = 0; q < n && best < 0; ++q) {
          if (q == p || has(q, it.expert)) continue;
          for (size_t i = 0; i < lists[q].size(); ++i) {
            const int x = lists[q][i];
            if (has(p, x)) continue;
            take_slot(p, lists);
            lists[p].push_back(x);
            has(p, x) = 1;
            has(q, x) = 0;
            lists[q].erase(lists[q].begin() + static_cast<std::ptrdiff_t>(i));
            best = q;
            break;
          }
        }
      }
      MOE_CHECK_AS("placement", best >= 0,
                   "packing: no rank can take another replica of expert {} (too many replicas "
                   "for {} ranks)",
                   it.expert, n);
    }
    take_slot(best, lists);
    lists[best].push_back(it.expert);
    has(best, it.expert) = 1;
    rank_load[best] += it.load;
  }
  return lists;
}

// One Item per replica, each carrying load / count.
std::vector<Item> replica_items(std::span<const double> load, const std::vector<int>& counts,
                                const std::vector<int>& experts) {
  std::vector<Item> items;
  for (size_t i = 0; i < experts.size(); ++i) {
    for (int c = 0; c < counts[i]; ++c) {
      items.push_back({experts[i], load[static_cast<size_t>(experts[i])] / counts[i]});
    }
  }
  return items;
}

}  // namespace

RankLists load_balanced_placement(std::span<const double> expert_load, int num_ranks) {
  check_loads(expert_load, "load_balanced");
  MOE_CHECK_AS("placement", num_ranks >= 1, "load_balanced: needs >= 1 rank, got {}", num_ranks);
  const int num_experts = static_cast<int>(expert_load.size());
  std::vector<Item> items;
  for (int e = 0; e < num_experts; ++e) items.push_back({e, expert_load[e]});
  return pack(std::move(items), num_ranks, num_experts);
}

std::vector<int> replica_counts(std::span<const double> expert_load, int redundant,
                                int max_replicas) {
  const int num_experts = static_cast<int>(expert_load.size());
  MOE_CHECK_AS("placement", redundant >= 0 && max_replicas >= 1,
               "replicas: redundant slots must be >= 0 (got {}) and max replicas >= 1 (got {})",
               redundant, max_replicas);
  MOE_CHECK_AS(
      "placement",
      static_cast<int64_t>(redundant) <= static_cast<int64_t>(num_experts) * (max_replicas - 1),
      "replicas: {} redundant slots for {} experts would put some expert on more than "
      "{} ranks (at most {} redundant slots)",
      redundant, num_experts, max_replicas, static_cast<int64_t>(num_experts) * (max_replicas - 1));
  std::vector<int> counts(static_cast<size_t>(num_experts), 1);
  for (int s = 0; s < redundant; ++s) {
    int best = -1;
    for (int e = 0; e < num_experts; ++e) {
      if (counts[e] >= max_replicas) continue;
      if (best < 0 || expert_load[e] / counts[e] > expert_load[best] / counts[best]) best = e;
    }
    ++counts[static_cast<size_t>(best)];
  }
  return counts;
}

RankLists replicated_placement(std::span<const double> expert_load, int num_ranks, int redundant,
                               int ranks_per_node) {
  check_loads(expert_load, "replicated");
  MOE_CHECK_AS("placement", num_ranks >= 1, "replicated: needs >= 1 rank, got {}", num_ranks);
  const int num_experts = static_cast<int>(expert_load.size());
  const std::vector<int> capacity = even_capacity(num_experts + redundant, num_ranks);
  std::vector<int> all(static_cast<size_t>(num_experts));
  std::iota(all.begin(), all.end(), 0);
  if (ranks_per_node <= 0 || ranks_per_node >= num_ranks) {
    const std::vector<int> counts = replica_counts(expert_load, redundant, num_ranks);
    return pack(replica_items(expert_load, counts, all), num_ranks, num_experts);
  }

  // Hierarchical: experts -> nodes (balanced by load, equal expert counts), then replicas and
  // packing inside each node onto its ranks' slots (the global per-rank slot counts).
  const int g = ranks_per_node;
  MOE_CHECK_AS("placement", num_ranks % g == 0,
               "replicated: {} ranks do not split into nodes of {} ranks (--ranks-per-node)",
               num_ranks, g);
  const int num_nodes = num_ranks / g;
  std::vector<Item> experts;
  for (int e = 0; e < num_experts; ++e) experts.push_back({e, expert_load[e]});
  const RankLists node_experts = pack(std::move(experts), num_nodes, num_experts);
  RankLists lists(static_cast<size_t>(num_ranks));
  for (int m = 0; m < num_nodes; ++m) {
    const std::vector<int> node_cap(capacity.begin() + m * g, capacity.begin() + (m + 1) * g);
    const int node_slots = std::accumulate(node_cap.begin(), node_cap.end(), 0);
    const std::vector<int>& mine = node_experts[static_cast<size_t>(m)];
    const int node_redundant = node_slots - static_cast<int>(mine.size());
    MOE_CHECK_AS("placement", node_redundant >= 0,
                 "replicated: node {} holds {} experts but its {} ranks have {} slots; use a "
                 "redundant count that fills every node",
                 m, mine.size(), g, node_slots);
    std::vector<double> node_load;
    for (int e : mine) node_load.push_back(expert_load[static_cast<size_t>(e)]);
    const std::vector<int> counts = replica_counts(node_load, node_redundant, g);
    const RankLists node_lists = pack(replica_items(expert_load, counts, mine), g, num_experts);
    for (int r = 0; r < g; ++r) lists[static_cast<size_t>(m * g + r)] = node_lists[r];
  }
  return lists;
}

void add_coactivation(Coactivation& c, std::span<const int32_t> ids, int top_k) {
  MOE_CHECK_AS("placement", c.num_experts >= 1 && top_k >= 1, "co-activation: {} experts, top-{}",
               c.num_experts, top_k);
  const size_t e_count = static_cast<size_t>(c.num_experts);
  if (c.pairs.size() != e_count * e_count) c.pairs.assign(e_count * e_count, 0.0);
  const size_t num_tokens = ids.size() / static_cast<size_t>(top_k);
  for (size_t t = 0; t < num_tokens; ++t) {
    const int32_t* row = ids.data() + t * top_k;
    for (int i = 0; i < top_k; ++i) {
      MOE_CHECK_AS("placement", row[i] >= 0 && row[i] < c.num_experts,
                   "co-activation: token {} names expert {}, outside 0..{}", t, row[i],
                   c.num_experts - 1);
      for (int j = i + 1; j < top_k; ++j) {
        if (row[i] == row[j]) continue;
        c.pairs[row[i] * e_count + row[j]] += 1.0;
        c.pairs[row[j] * e_count + row[i]] += 1.0;
      }
    }
  }
}

namespace {

// The local search behind coactivation_placement. A candidate gives each expert a rank; swaps
// keep every rank's slot count and keep its load within `cap` (or no worse than before).
class CoactivationSearch {
 public:
  // One candidate: rank of each expert, rank loads, and w[e * n + r] = co-activation of e with
  // the experts on rank r (e itself excluded).
  struct State {
    std::vector<int> rank_of;
    std::vector<double> rank_load;
    std::vector<double> w;
  };

  CoactivationSearch(std::span<const double> expert_load, const Coactivation& coact, int num_ranks,
                     double cap)
      : expert_load_(expert_load),
        coact_(coact),
        n_(static_cast<size_t>(num_ranks)),
        e_count_(expert_load.size()),
        cap_(cap) {}

  State make_state(const std::vector<int>& rank_of) const {
    State s{rank_of, std::vector<double>(n_, 0.0), std::vector<double>(e_count_ * n_, 0.0)};
    for (size_t e = 0; e < e_count_; ++e) s.rank_load[rank_of[e]] += expert_load_[e];
    for (size_t a = 0; a < e_count_; ++a) {
      for (size_t b = 0; b < e_count_; ++b) {
        if (a != b) s.w[a * n_ + rank_of[b]] += coact_.at(static_cast<int>(a), static_cast<int>(b));
      }
    }
    return s;
  }

  // Co-activation weight inside ranks.
  double inside(const State& s) const {
    double v = 0;
    for (size_t e = 0; e < e_count_; ++e) v += s.w[e * n_ + s.rank_of[e]];
    return v / 2;
  }

  // Pairwise swaps that raise the weight inside ranks and keep both ranks within the bound (or
  // no worse than before). Slot counts never change.
  void improve(State& s) const {
    for (int pass = 0; pass < 100; ++pass) {
      bool changed = false;
      for (size_t a = 0; a < e_count_; ++a) {
        for (size_t b = a + 1; b < e_count_; ++b) changed = try_swap(s, a, b) || changed;
      }
      if (!changed) break;
    }
  }

  // Greedy grouping, heaviest first onto the rank it co-fires with most (within the bound; ties
  // and empty ranks: the lightest), at most capacity[r] experts on rank r.
  std::vector<int> greedy_grouping(const std::vector<int>& capacity) const {
    std::vector<int> order(e_count_);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return expert_load_[a] > expert_load_[b]; });
    std::vector<int> fill(n_, 0), greedy(e_count_, -1);
    std::vector<double> load(n_, 0.0), with(e_count_ * n_, 0.0);
    for (int e : order) {
      int pick = -1;
      bool pick_fits = false;
      for (size_t r = 0; r < n_; ++r) {
        if (fill[r] >= capacity[r]) continue;
        const bool fits = load[r] + expert_load_[e] <= cap_;
        if (pick < 0 || (fits && !pick_fits)) {
          pick = static_cast<int>(r);
          pick_fits = fits;
          continue;
        }
        if (fits != pick_fits) continue;
        const double here = with[e * n_ + r], there = with[e * n_ + pick];
        if (here > there || (here == there && load[r] < load[pick])) pick = static_cast<int>(r);
      }
      greedy[e] = pick;
      ++fill[pick];
      load[pick] += expert_load_[e];
      for (size_t x = 0; x < e_count_; ++x)
        with[x * n_ + pick] += coact_.at(static_cast<int>(x), e);
    }
    return greedy;
  }

 private:
  // Swaps experts a and b when that raises the weight inside ranks within the bound.
  bool try_swap(State& s, size_t a, size_t b) const {
    const int p = s.rank_of[a], q = s.rank_of[b];
    if (p == q) return false;
    const double cab = coact_.at(static_cast<int>(a), static_cast<int>(b));
    const double gain =
        s.w[a * n_ + q] + s.w[b * n_ + p] - 2 * cab - s.w[a * n_ + p] - s.w[b * n_ + q];
    if (gain <= 1e-9) return false;
    const double lp = s.rank_load[p] - expert_load_[a] + expert_load_[b];
    const double lq = s.rank_load[q] - expert_load_[b] + expert_load_[a];
    if ((lp > cap_ && lp > s.rank_load[p]) || (lq > cap_ && lq > s.rank_load[q])) return false;
    s.rank_load[p] = lp;
    s.rank_load[q] = lq;
    s.rank_of[a] = q;
    s.rank_of[b] = p;
    for (size_t x = 0; x < e_count_; ++x) {
      const double ca = coact_.at(static_cast<int>(x), static_cast<int>(a));
      const double cb = coact_.at(static_cast<int>(x), static_cast<int>(b));
      s.w[x * n_ + p] += cb - ca;
      s.w[x * n_ + q] += ca - cb;
    }
    return true;
  }

  std::span<const double> expert_load_;
  const Coactivation& coact_;
  size_t n_, e_count_;
  double cap_;
};

}  // namespace

RankLists coactivation_placement(std::span<const double> expert_load, const Coactivation& coact,
                                 int num_ranks, double min_balancedness) {
  check_loads(expert_load, "coactivation");
  const int num_experts = static_cast<int>(expert_load.size());
  MOE_CHECK_AS("placement", num_ranks >= 1, "coactivation: needs >= 1 rank, got {}", num_ranks);
  MOE_CHECK_AS("placement",
               coact.num_experts == num_experts &&
                   coact.pairs.size() == static_cast<size_t>(num_experts) * num_experts,
               "coactivation: counts are for {} experts, the load profile has {}",
               coact.num_experts, num_experts);
  MOE_CHECK_AS("placement", min_balancedness > 0 && min_balancedness <= 1,
               "coactivation: the balancedness bound must be in (0, 1], got {}", min_balancedness);
  const size_t n = static_cast<size_t>(num_ranks);
  const size_t e_count = static_cast<size_t>(num_experts);
  const RankLists balanced = load_balanced_placement(expert_load, num_ranks);
  const double total = std::accumulate(expert_load.begin(), expert_load.end(), 0.0);
  double balanced_max = 0;
  for (const auto& l : balanced) {
    double s = 0;
    for (int e : l) s += expert_load[static_cast<size_t>(e)];
    balanced_max = std::max(balanced_max, s);
  }
  const double cap = std::max(total / num_ranks / min_balancedness, balanced_max) * (1 + 1e-12);
  const CoactivationSearch search(expert_load, coact, num_ranks, cap);

  // Start 1: load_balanced.
  std::vector<int> rank_of(e_count, 0);
  for (size_t r = 0; r < n; ++r) {
    for (int e : balanced[r]) rank_of[static_cast<size_t>(e)] = static_cast<int>(r);
  }
  CoactivationSearch::State best = search.make_state(rank_of);
  search.improve(best);

  // Start 2: greedy grouping.
  CoactivationSearch::State s =
      search.make_state(search.greedy_grouping(even_capacity(num_experts, num_ranks)));
  search.improve(s);
  const double s_max = *std::max_element(s.rank_load.begin(), s.rank_load.end());
  if (s_max <= cap && search.inside(s) > search.inside(best)) best = std::move(s);

  RankLists lists(n);
  for (size_t e = 0; e < e_count; ++e) lists[best.rank_of[e]].push_back(static_cast<int>(e));
  return lists;
}

double expected_balancedness(const RankLists& lists, std::span<const double> expert_load) {
  std::vector<int> count(expert_load.size(), 0);
  for (const auto& l : lists) {
    for (int e : l) ++count.at(static_cast<size_t>(e));
  }
  double total = 0, max = 0;
  for (const auto& l : lists) {
    double s = 0;
    for (int e : l) s += expert_load[static_cast<size_t>(e)] / count[static_cast<size_t>(e)];
    total += s;
    max = std::max(max, s);
  }
  return max > 0 ? total / static_cast<double>(lists.size()) / max : 1.0;
}

std::string placement_yaml(int num_ranks, const std::vector<std::pair<int, RankLists>>& layers,
                           const std::vector<std::string>& header) {
  std::string out;
  for (const std::string& h : header) out += fmt::format("# {}\n", h);
  out += fmt::format("strategy: explicit\nranks: {}\nlayers:\n", num_ranks);
  for (const auto& [layer, lists] : layers) {
    MOE_CHECK_AS("placement", static_cast<int>(lists.size()) == num_ranks,
                 "placement writer: layer {} lists {} ranks, the file is for {}", layer,
                 lists.size(), num_ranks);
    out += fmt::format("  {}:\n", layer);
    for (const auto& l : lists) out += fmt::format("    - [{}]\n", fmt::join(l, ", "));
  }
  return out;
}

void write_placement_yaml(const std::string& path, int num_ranks,
                          const std::vector<std::pair<int, RankLists>>& layers,
                          const std::vector<std::string>& header) {
  std::ofstream f(path);
  MOE_CHECK_AS("io", static_cast<bool>(f), "{}: cannot open for writing", path);
  f << placement_yaml(num_ranks, layers, header);
  MOE_CHECK_AS("io", static_cast<bool>(f), "{}: write failed", path);
}

}  // namespace moe::parallel
