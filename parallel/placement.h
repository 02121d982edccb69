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
  std::string source = "<built-in>";                                   // file name for errors
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

// Strategy helpers (also used by tests): per-rank expert lists for one layer.
std::vector<std::vector<int>> contiguous_placement(int num_experts, int num_ranks);
std::vector<std::vector<int>> round_robin_placement(int num_experts, int num_ranks);

}  // namespace moe::parallel
