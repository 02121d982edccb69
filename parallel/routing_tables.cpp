// Routing tables from a placement (routing_tables.h).
#include "parallel/routing_tables.h"

#include <algorithm>

namespace moe::parallel {

RoutingArrays flat_routing(const LayerPlacement& lp) {
  RoutingArrays a;
  a.begin.push_back(0);
  for (const auto& replicas : lp.expert_slots) {
    for (const Slot& s : replicas) {
      a.ranks.push_back(s.rank);
      a.slots.push_back(s.local_slot);
    }
    a.begin.push_back(static_cast<int32_t>(a.ranks.size()));
  }
  for (int d = 0; d < lp.num_ranks(); ++d) a.num_slots.push_back(lp.num_local_slots(d));
  return a;
}

RoutingArrays proxy_routing(const LayerPlacement& lp, const NodeLayout& nodes) {
  RoutingArrays a;
  a.begin.push_back(0);
  for (int e = 0; e < lp.num_experts(); ++e) {
    std::vector<int> holding;
    for (const Slot& s : lp.expert_slots[static_cast<size_t>(e)]) {
      const int node = nodes.node_of(s.rank);
      if (std::find(holding.begin(), holding.end(), node) == holding.end()) holding.push_back(node);
    }
    std::sort(holding.begin(), holding.end());
    for (int node : holding) {
      a.ranks.push_back(nodes.first_rank(node) + nodes.local_rank);
      a.slots.push_back(e);
    }
    a.begin.push_back(static_cast<int32_t>(a.ranks.size()));
  }
  a.num_slots.assign(static_cast<size_t>(lp.num_ranks()), lp.num_experts());
  return a;
}

LayerPlacement node_part(const LayerPlacement& lp, const NodeLayout& nodes) {
  std::vector<std::vector<int>> rank_experts;
  for (int i = 0; i < nodes.local_size; ++i) {
    rank_experts.push_back(lp.rank_experts[static_cast<size_t>(nodes.first_rank(nodes.node) + i)]);
  }
  LayerPlacement part;
  part.rank_experts = std::move(rank_experts);
  part.expert_slots.assign(static_cast<size_t>(lp.num_experts()), {});
  for (int r = 0; r < part.num_ranks(); ++r) {
    for (int s = 0; s < part.num_local_slots(r); ++s) {
      part.expert_slots[static_cast<size_t>(
                            part.rank_experts[static_cast<size_t>(r)][static_cast<size_t>(s)])]
          .push_back(Slot{r, s});
    }
  }
  return part;
}

}  // namespace moe::parallel
