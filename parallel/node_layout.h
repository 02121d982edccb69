// NodeLayout: which node a rank is on and its place there. Ranks of one node are one contiguous
// block and every node holds the same number of ranks (what the node-first exchange and the
// hierarchical placement assume); anything else is rejected with the node sizes named.
#pragma once

#include <span>
#include <string>

namespace moe::parallel {

struct NodeLayout {
  int node = 0;  // this rank's node, 0..num_nodes-1 in rank order
  int num_nodes = 1;
  int local_rank = 0;  // position among the ranks of this node (picks the GPU on CUDA)
  int local_size = 1;  // ranks per node, the same on every node

  int world_size() const { return num_nodes * local_size; }
  int node_of(int rank) const { return rank / local_size; }
  int first_rank(int node_index) const { return node_index * local_size; }
  std::string describe() const;  // "2 nodes x 4 ranks"
};

// From the node id of every rank (any labels, equal for ranks sharing a node). Throws
// moe::Error("comm") with "mismatched node layout" unless the nodes are contiguous blocks of one
// size; `source` names where the ids came from, for the message.
NodeLayout node_layout_from_ids(std::span<const int> node_of_rank, int rank,
                                const std::string& source);

// `--ranks-per-node G`: nodes of G consecutive ranks. Throws moe::Error("config") unless G >= 1
// and G divides world_size.
NodeLayout node_layout_for_ranks_per_node(int world_size, int rank, int ranks_per_node);

}  // namespace moe::parallel
