// Node layouts from node ids or a fixed ranks-per-node count, with the checks both share.
#include "parallel/node_layout.h"

#include <fmt/format.h>

#include <vector>

#include "kernels/common/check.h"

namespace moe::parallel {

std::string NodeLayout::describe() const {
  return fmt::format("{} node{} x {} rank{}", num_nodes, num_nodes == 1 ? "" : "s", local_size,
                     local_size == 1 ? "" : "s");
}

NodeLayout node_layout_from_ids(std::span<const int> node_of_rank, int rank,
                                const std::string& source) {
  const int world = static_cast<int>(node_of_rank.size());
  MOE_CHECK_AS("comm", world >= 1 && rank >= 0 && rank < world,
               "node layout: rank {} of a world of {} ranks", rank, world);
  // Sizes of the runs of equal ids, in rank order; a node met again after another one is split.
  std::vector<int> run_sizes, run_ids;
  for (int r = 0; r < world; ++r) {
    const int id = node_of_rank[static_cast<size_t>(r)];
    if (!run_ids.empty() && run_ids.back() == id) {
      ++run_sizes.back();
      continue;
    }
    for (size_t j = 0; j < run_ids.size(); ++j) {
      MOE_CHECK_AS("comm", run_ids[j] != id,
                   "mismatched node layout ({}): the ranks of node {} are not consecutive (rank {} "
                   "is on it again after ranks of another node); start the ranks by node "
                   "(mpirun --map-by node is not supported; use the default --map-by slot)",
                   source, j, r);
    }
    run_ids.push_back(id);
    run_sizes.push_back(1);
  }
  for (size_t j = 1; j < run_sizes.size(); ++j) {
    MOE_CHECK_AS("comm", run_sizes[j] == run_sizes[0],
                 "mismatched node layout ({}): nodes hold {} ranks; every node must hold the same "
                 "number (give each host the same slots)",
                 source, fmt::join(run_sizes, ", "));
  }
  NodeLayout l;
  l.num_nodes = static_cast<int>(run_sizes.size());
  l.local_size = run_sizes[0];
  l.node = rank / l.local_size;
  l.local_rank = rank % l.local_size;
  return l;
}

NodeLayout node_layout_for_ranks_per_node(int world_size, int rank, int ranks_per_node) {
  MOE_CHECK_AS("config", ranks_per_node >= 1 && world_size % ranks_per_node == 0,
               "--ranks-per-node {} does not divide the world size {} (nodes must hold equal "
               "numbers of ranks)",
               ranks_per_node, world_size);
  std::vector<int> ids(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) ids[static_cast<size_t>(r)] = r / ranks_per_node;
  return node_layout_from_ids(ids, rank, "--ranks-per-node");
}

}  // namespace moe::parallel
