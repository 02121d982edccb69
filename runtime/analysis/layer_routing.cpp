// The cost model's routing replay: build_dispatch_layout per rank, its rows per destination, and
// from the same rows the node-first exchange's two levels (layer_routing.h).
#include "runtime/analysis/layer_routing.h"

#include <span>

#include "parallel/dispatch_layout.h"

namespace moe::runtime {
namespace {

// The node-first rows of source r from its flat layout: each sent row (token t, rank d) is one
// second-level row from t's proxy on d's node to d; the first of t's rows to a node is also one
// first-level row from r to that proxy.
void add_node_first_rows(const parallel::DispatchLayout& L, int r, int g, double scale,
                         LayerRankLoad& out) {
  std::vector<int> dest_of_row;  // send rows are grouped by destination, ascending
  for (int d = 0; d < L.num_ranks; ++d) dest_of_row.insert(dest_of_row.end(), L.send_counts[d], d);
  for (int64_t t = 0; t < L.num_tokens; ++t) {
    int last_node = -1;  // a token's rows are in destination order, so its nodes ascend
    for (int64_t i = L.token_offsets[t]; i < L.token_offsets[t + 1]; ++i) {
      const int d = dest_of_row[static_cast<size_t>(L.token_rows[static_cast<size_t>(i)])];
      const int node = d / g, proxy = node * g + r % g;
      out.forward_rows[proxy][d] += scale;
      if (node != last_node) out.node_rows[r][proxy] += scale;
      last_node = node;
    }
  }
}

}  // namespace

LayerRankLoad route_layer(const SyntheticRouting& routing, const parallel::LayerPlacement& lp,
                          int layer, int64_t step, const std::vector<RankSeqs>& ranks,
                          int64_t stride, int top_k, int ranks_per_node) {
  const int N = static_cast<int>(ranks.size());
  LayerRankLoad out;
  out.tokens.assign(N, 0);
  out.rows.assign(N, std::vector<double>(N, 0.0));
  out.slot_pairs.resize(N);
  out.send_pairs.assign(N, 0.0);
  if (ranks_per_node > 0) {
    out.node_rows.assign(N, std::vector<double>(N, 0.0));
    out.forward_rows.assign(N, std::vector<double>(N, 0.0));
  }
  for (int r = 0; r < N; ++r) out.slot_pairs[r].assign(lp.num_local_slots(r), 0.0);
  const double scale = static_cast<double>(stride);
  for (int r = 0; r < N; ++r) {
    const RankSeqs& rs = ranks[r];
    out.tokens[r] = rs.tokens;
    std::vector<int32_t> ids;
    std::vector<float> weights;
    int64_t index = 0, count = 0;
    for (int64_t seq : rs.sequences) {
      for (int64_t t = 0; t < rs.new_per_seq; ++t, ++index) {
        if (index % stride != 0) continue;
        ids.resize(static_cast<size_t>((count + 1) * top_k));
        weights.resize(ids.size());
        routing.route_token(step, layer, TokenId{seq, rs.past_len + t},
                            std::span<int32_t>(ids).subspan(count * top_k, top_k),
                            std::span<float>(weights).subspan(count * top_k, top_k));
        ++count;
      }
    }
    const parallel::DispatchLayout L =
        parallel::build_dispatch_layout(lp, r, ids, weights, count, top_k);
    int64_t row = 0;
    for (int d = 0; d < N; ++d) {
      out.rows[r][d] = scale * static_cast<double>(L.send_counts[d]);
      for (int64_t i = 0; i < L.send_counts[d]; ++i, ++row) {
        for (int j = 0; j < top_k; ++j) {
          const int32_t slot = L.send_routes[static_cast<size_t>(row * top_k + j)].local_slot;
          if (slot < 0) continue;
          out.slot_pairs[d][slot] += scale;
          out.send_pairs[r] += scale;
        }
      }
    }
    if (ranks_per_node > 0) add_node_first_rows(L, r, ranks_per_node, scale, out);
  }
  return out;
}

LinkRows link_rows(const LayerRankLoad& load, int g) {
  const bool node_first = !load.node_rows.empty();
  LinkRows out;
  const size_t N = load.rows.size();
  for (size_t r = 0; r < N; ++r) {
    for (size_t p = 0; p < N; ++p) {
      if (p == r) continue;
      const bool same_node = r / g == p / g;
      // Node-first: first-level rows only cross nodes, second-level rows only stay inside.
      const double inter = node_first ? load.node_rows[r][p] : (same_node ? 0 : load.rows[r][p]);
      const double intra = node_first ? load.forward_rows[r][p] : (same_node ? load.rows[r][p] : 0);
      out.inter_node += inter;
      out.intra_node += intra;
    }
  }
  out.remote = out.inter_node + out.intra_node;
  return out;
}

}  // namespace moe::runtime
