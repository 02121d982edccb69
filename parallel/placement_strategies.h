// Load-aware placement strategies for one MoE layer: pure functions from a load profile (and
// co-activation counts) to per-rank expert lists, the explicit form every command reads; plus the
// writer of explicit placement YAML. Every result holds each expert at least once, at most once
// per rank, and gives every rank the same slot count (the first (slots % ranks) ranks one more).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moe::parallel {

using RankLists = std::vector<std::vector<int>>;  // [num_ranks][local slots] -> expert

// Experts packed heaviest first, each onto the rank with the lowest load so far among ranks
// with a free slot (ties: lower rank). expert_load: [E] (any non-negative unit, e.g. pairs).
RankLists load_balanced_placement(std::span<const double> expert_load, int num_ranks);

// Replica counts for E + redundant slots: each extra slot goes, one at a time, to the expert
// with the highest load per replica (ties: lower expert id), never beyond max_replicas.
std::vector<int> replica_counts(std::span<const double> expert_load, int redundant,
                                int max_replicas);

// EPLB-style replication: `redundant` extra slots by replica_counts, then every replica (load /
// count each) packed as load_balanced does, no two replicas of an expert on one rank. With
// ranks_per_node G > 0 (num_ranks % G == 0), the hierarchical variant: experts are first packed
// onto nodes by load (equal expert counts per node), each node gets an equal share of the
// redundant slots for its own experts, and all replicas of an expert stay inside its node.
RankLists replicated_placement(std::span<const double> expert_load, int num_ranks, int redundant,
                               int ranks_per_node = 0);

// Co-activation counts of one layer: pairs[a * E + b] = tokens that chose both a and b (a != b;
// symmetric; the diagonal is unused).
struct Coactivation {
  int num_experts = 0;
  std::vector<double> pairs;  // [E * E]
  double at(int a, int b) const { return pairs[static_cast<size_t>(a) * num_experts + b]; }
};

// Adds every token's pairs: ids [num_tokens, top_k] row-major.
void add_coactivation(Coactivation& c, std::span<const int32_t> ids, int top_k);

// Co-locates experts that fire together: maximises the co-activation weight inside ranks (so a
// token's experts span fewer ranks and it is sent to fewer of them) by pairwise swaps from two
// starts (load_balanced, and a greedy grouping), with equal slot counts per rank. Bound: every
// rank's load stays <= max(mean / min_balancedness, the load_balanced maximum), so the fitted
// balancedness is >= min(min_balancedness, load_balanced's).
RankLists coactivation_placement(std::span<const double> expert_load, const Coactivation& coact,
                                 int num_ranks, double min_balancedness = 0.9);

// Balancedness (mean / max rank load) of lists under expert_load, replicas sharing their
// expert's load equally (what the split rule does on average).
double expected_balancedness(const RankLists& lists, std::span<const double> expert_load);

// Writes an explicit placement YAML that load_placement_spec reads back unchanged: `strategy:
// explicit`, `ranks: N`, and `layers:` with one per-rank list per entry of `layers` (MoE layer
// index, lists). `header` lines are written first as comments (provenance).
std::string placement_yaml(int num_ranks, const std::vector<std::pair<int, RankLists>>& layers,
                           const std::vector<std::string>& header = {});
void write_placement_yaml(const std::string& path, int num_ranks,
                          const std::vector<std::pair<int, RankLists>>& layers,
                          const std::vector<std::string>& header = {});

}  // namespace moe::parallel
