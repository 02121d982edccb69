// Expert placement: for every layer, each logical expert maps to one or more physical slots
// (rank, local_slot); a rank's local slots are numbered 0..n-1 in the order the map lists them.
// Invariants (checked by validate()): every expert has >= 1 slot, every slot's rank < num_ranks,
// each (rank, local_slot) holds exactly one expert, local slots are dense per rank.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moe::parallel {

struct Slot {
  int rank = 0;
  int local_slot = 0;
};

struct LayerPlacement {
  std::vector<std::vector<Slot>> expert_slots;  // [num_experts][replicas]
  std::vector<std::vector<int>> rank_experts;   // [num_ranks][local slots] -> logical expert

  int num_experts() const { return static_cast<int>(expert_slots.size()); }
  int num_ranks() const { return static_cast<int>(rank_experts.size()); }
  int num_local_slots(int rank) const { return static_cast<int>(rank_experts[rank].size()); }
  // Rebuilds expert_slots from rank_experts (the source of truth when read from YAML).
  static LayerPlacement from_rank_experts(std::vector<std::vector<int>> rank_experts,
                                          int num_experts);
  void validate(int num_experts, int num_ranks, const std::string& where) const;
};

// What a placement YAML says (configs/placements/*.yaml):
//   strategy: contiguous | round_robin | explicit
//   ranks: 4                 # optional; when present must equal the world size
//   layers:                  # explicit only: layer index (or "default") -> per-rank expert lists
//     default: [[0, 1, ...], [2, 3, ...], ...]
//     3: [[...], [...], ...]
struct PlacementSpec {
  std::string strategy = "contiguous";
  std::optional<int> num_ranks;  // as declared in the file
  std::optional<std::vector<std::vector<int>>> default_layer;
  std::vector<std::pair<int, std::vector<std::vector<int>>>> layers;  // explicit per-layer maps
  std::string source = "<built-in>";                                  // file name for errors
};

// Parses a placement YAML; errors name the file, key and line.
PlacementSpec load_placement_spec(const std::string& path);

class Placement {
 public:
  // layer_is_moe[l] says whether layer l has experts; dense layers get an empty LayerPlacement.
  static Placement build(const PlacementSpec& spec, const std::vector<bool>& layer_is_moe,
                         int num_experts, int num_ranks);

  int num_ranks() const { return num_ranks_; }
  int num_experts() const { return num_experts_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  const LayerPlacement& layer(int l) const { return layers_.at(l); }
  const std::string& strategy() const { return strategy_; }

 private:
  int num_ranks_ = 1;
  int num_experts_ = 0;
  std::string strategy_;
  std::vector<LayerPlacement> layers_;
};

// The replica split rule, in one place: the dispatcher's layout and the placement analysis both
// route through it, so analysed loads are the loads the runtime produces.
//
// On source rank r, the n-th (token, expert) pair for expert e (n = 0, 1, ... counted over the
// rank's tokens in layout order, i.e. ascending local token index) goes to replica
// (n + r) mod c of expert_slots[e], where c is e's replica count (replicas in ascending rank
// order). So every rank spreads its own pairs for e over the c replicas in turn (shares differ
// by at most one), and the rank offset staggers where each rank's turn starts, so the
// remainders of different ranks land on different replicas. Each replica therefore receives
// 1/c of the job's pairs for e (to within one pair per source rank), whatever the ranks' token
// counts; a rank with no tokens, or with many, does not tilt the split. A replica on the
// source rank gets no preference: preferring it would make that replica's share depend on how
// many tokens its own rank holds, which is what overloaded replicas on busy ranks before.
// Replicas hold identical weights, so the choice changes only fp32 summation order.
class ReplicaSplit {
 public:
  ReplicaSplit(const LayerPlacement& placement, int rank);
  // The slot that expert `expert`'s next pair from this rank goes to (advances e's counter).
  const Slot& next(int32_t expert) {
    const std::vector<Slot>& slots = placement_->expert_slots[static_cast<size_t>(expert)];
    if (slots.size() == 1) return slots[0];
    const uint32_t n = counter_[static_cast<size_t>(expert)]++;
    return slots[(n + rank_) % slots.size()];
  }

 private:
  const LayerPlacement* placement_;
  uint32_t rank_;
  std::vector<uint32_t> counter_;  // [num_experts] pairs sent so far per expert
};

// Strategy helpers (also used by tests): per-rank expert lists for one layer.
std::vector<std::vector<int>> contiguous_placement(int num_experts, int num_ranks);
std::vector<std::vector<int>> round_robin_placement(int num_experts, int num_ranks);

}  // namespace moe::parallel
