// One MoE layer's routing replayed for the cost model (cost_model.h): every rank's tokens go
// through parallel::build_dispatch_layout (the dispatcher's specification: the same ReplicaSplit,
// the same dedup per rank), and the rows that gives are counted for both exchanges. Flat: one row
// per (token, destination rank). Node-first (parallel/dispatcher.h): from the same destination
// ranks, one row per (token, destination node) to the proxy (the source's local index on that
// node; its own node: the source itself), then one row per destination rank from the proxy.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/placement.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::runtime {

// One rank's share of one step: its sequences (new tokens, cached tokens).
struct RankSeqs {
  std::vector<int64_t> sequences;
  int64_t tokens = 0;
  int64_t new_per_seq = 0;
  int64_t past_len = 0;
};

// Loads of one MoE layer on every rank, in (token, expert) pairs and deduplicated rows. Rows are
// scaled up by the sampling stride (route_layer), so they may be fractional.
struct LayerRankLoad {
  std::vector<int64_t> tokens;                  // [N] own tokens
  std::vector<std::vector<double>> rows;        // [N src][N dst] rows sent (flat, dedup per rank)
  std::vector<std::vector<double>> slot_pairs;  // [N][local slots] pairs computed
  std::vector<double> send_pairs;               // [N] pairs over all destinations
  // Node-first, when route_layer had nodes (else empty): first level [N src][N proxy] rows (dedup
  // per node), second level [N proxy][N dst] rows (dedup per rank; proxy and dst share a node).
  std::vector<std::vector<double>> node_rows, forward_rows;
};

// Routes the tokens of `ranks` (rank r: ranks[r]) for MoE layer `layer` of step `step`; every
// `stride`-th token is routed and stands for `stride` tokens. ranks_per_node > 0 (dividing N):
// also the node-first rows for nodes of that many consecutive ranks.
LayerRankLoad route_layer(const SyntheticRouting& routing, const parallel::LayerPlacement& lp,
                          int layer, int64_t step, const std::vector<RankSeqs>& ranks,
                          int64_t stride, int top_k, int ranks_per_node = 0);

// Rows of one layer that leave their rank, summed over ranks, by link: remote = inter + intra.
// The exchange `load` was routed for: node-first when it has node_rows (nodes of ranks_per_node),
// else flat.
struct LinkRows {
  double remote = 0, inter_node = 0, intra_node = 0;
};
LinkRows link_rows(const LayerRankLoad& load, int ranks_per_node);

}  // namespace moe::runtime
