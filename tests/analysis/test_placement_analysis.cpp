// Placement analysis: its counts equal what build_dispatch_layout gives rank by rank (random
// routings, uneven placements, replicas, empty ranks, several batches); byte counts follow
// ExchangeStats; strategy fitting; and the balance targets on held-out zipf(1.2) routing
// at 8 ranks (one layer, 4096 tokens per rank), measured as the runtime routes.
#include <gtest/gtest.h>

#include <random>

#include "../common/expect_error.h"
#include "parallel/dispatcher.h"
#include "parallel/load_stats.h"
#include "runtime/analysis/placement_analysis.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::runtime {
namespace {

// A trace of `tokens` rows per layer: distinct experts per row, skewed towards low ids.
RoutingTrace random_trace(uint64_t seed, int64_t tokens, int experts, int k,
                          const std::vector<int64_t>& layers, int num_layers) {
  std::mt19937_64 gen(seed);
  RoutingTrace t;
  t.num_experts = experts;
  t.top_k = k;
  t.num_layers = num_layers;
  t.layers = layers;
  for (size_t i = 0; i < layers.size(); ++i) {
    std::vector<int32_t> ids;
    for (int64_t r = 0; r < tokens; ++r) {
      std::vector<int32_t> row;
      while (static_cast<int>(row.size()) < k) {
        const int e = static_cast<int>(std::min(gen() % experts, gen() % experts));
        if (std::find(row.begin(), row.end(), e) == row.end()) row.push_back(e);
      }
      ids.insert(ids.end(), row.begin(), row.end());
    }
    t.ids.push_back(std::move(ids));
    t.weights.emplace_back();
  }
  return t;
}

TEST(PlacementAnalysis, CountsEqualTheDispatcherLayoutRankByRank) {
  std::mt19937_64 gen(7);
  for (int trial = 0; trial < 30; ++trial) {
    const int n = 1 + static_cast<int>(gen() % 9);
    const int experts = 4 + static_cast<int>(gen() % 20);
    const int k = 1 + static_cast<int>(gen() % std::min(experts, 6));
    const int64_t tokens = 1 + static_cast<int64_t>(gen() % 60);
    const int64_t per_step = static_cast<int64_t>(gen() % 3) * 7;  // 0 (one batch), 7 or 14
    RoutingTrace trace = random_trace(gen(), tokens, experts, k, {1, 2}, 3);
    // Uneven lists with replicas; some ranks may hold nothing.
    parallel::RankLists lists(static_cast<size_t>(n));
    for (int e = 0; e < experts; ++e) lists[gen() % std::max(1, n - 1)].push_back(e);
    for (int e = 0; e < experts; ++e) {
      for (int r = 0; r < n; ++r) {
        if (gen() % 4 == 0 && std::find(lists[r].begin(), lists[r].end(), e) == lists[r].end()) {
          lists[r].push_back(e);
        }
      }
    }
    // Layer 2: the same lists reversed, so the two layers route differently.
    parallel::RankLists reversed(lists.rbegin(), lists.rend());
    parallel::Placement p = placement_from_lists({{1, lists}, {2, reversed}}, trace, n, "random");
    AnalysisOptions opt;
    opt.hidden = 16;
    opt.tokens_per_step = per_step;
    opt.ranks_per_node = n % 2 == 0 ? 2 : 1;
    PlacementReport rep = analyze_placement(trace, p, opt);

    ASSERT_EQ(rep.loads.size(), 2u);
    // Every row that leaves its rank is on one link or the other; node-first sends at most as
    // many inter-node rows, and one extra intra-node hop only where the node's first stop holds
    // none of the token's experts.
    const NodeTraffic& nt = rep.nodes;
    EXPECT_EQ(nt.flat_inter_rows + nt.flat_intra_rows, rep.traffic.rows_sent_remote);
    EXPECT_LE(nt.node_first_inter_rows, nt.flat_inter_rows);
    EXPECT_GE(nt.node_first_inter_rows + nt.node_first_intra_rows,
              nt.flat_inter_rows + nt.flat_intra_rows);
    for (size_t li = 0; li < 2; ++li) {
      const int layer = static_cast<int>(trace.layers[li]);
      // The runtime: per batch, rank r gets rows r, r + n, ... of the batch, in that order.
      parallel::LayerLoad sum;
      const int64_t batch = per_step > 0 ? per_step : tokens;
      const int64_t row_bytes = 16 * 4, routes_bytes = k * 8;
      for (int64_t b = 0; b < tokens; b += batch) {
        for (int r = 0; r < n; ++r) {
          std::vector<int32_t> ids;
          for (int64_t t = b + r; t < std::min(tokens, b + batch); t += n) {
            ids.insert(ids.end(), trace.ids[li].begin() + t * k,
                       trace.ids[li].begin() + (t + 1) * k);
          }
          const int64_t mine = static_cast<int64_t>(ids.size()) / k;
          std::vector<float> w(ids.size(), 0.5f);
          parallel::DispatchLayout L =
              parallel::build_dispatch_layout(p.layer(layer), r, ids, w, mine, k);
          parallel::ExchangeStats x;
          x.rows_sent_remote = L.num_send_rows() - L.send_counts[r];
          x.rows_kept_local = L.send_counts[r];
          for (int d = 0; d < n; ++d) x.pairs_remote += d == r ? 0 : L.pairs_per_rank[d];
          sum += parallel::local_layer_load(L, x);
        }
      }
      const parallel::LayerLoad& got = rep.loads.at(li);
      EXPECT_EQ(got.tokens_per_rank, sum.tokens_per_rank) << "trial " << trial;
      EXPECT_EQ(got.rows_per_rank, sum.rows_per_rank) << "trial " << trial;
      EXPECT_EQ(got.tokens_per_expert, sum.tokens_per_expert) << "trial " << trial;
      EXPECT_EQ(got.traffic.rows_sent_remote, sum.traffic.rows_sent_remote) << "trial " << trial;
      EXPECT_EQ(got.traffic.rows_kept_local, sum.traffic.rows_kept_local) << "trial " << trial;
      EXPECT_EQ(got.traffic.pairs_remote, sum.traffic.pairs_remote) << "trial " << trial;
      // Bytes as ExchangeStats counts them, summed over ranks.
      EXPECT_EQ(got.traffic.bytes_sent_remote,
                sum.traffic.rows_sent_remote * (2 * row_bytes + routes_bytes));
      EXPECT_EQ(got.traffic.bytes_remote_without_dedup,
                sum.traffic.pairs_remote * (2 * row_bytes + 8));
      EXPECT_DOUBLE_EQ(got.balancedness(), parallel::balancedness(sum.tokens_per_rank));
    }
  }
}

// A one-layer trace written out by hand: `ids` holds top_k experts per token.
RoutingTrace one_layer_trace(int experts, int top_k, std::vector<int32_t> ids) {
  RoutingTrace t;
  t.num_experts = experts;
  t.top_k = top_k;
  t.num_layers = 1;
  t.layers = {0};
  t.ids = {std::move(ids)};
  t.weights = {{}};
  return t;
}

TEST(PlacementAnalysis, HandCaseOnTwoRanks) {
  // 4 tokens, top-2, experts 0..3: rank 0 holds {0, 1}, rank 1 holds {2, 3}. Rows 0, 2 live on
  // rank 0, rows 1, 3 on rank 1.
  const RoutingTrace t = one_layer_trace(4, 2, {0, 1, 0, 2, 2, 3, 1, 3});
  parallel::Placement p = placement_from_lists({{0, {{0, 1}, {2, 3}}}}, t, 2, "hand");
  PlacementReport rep = analyze_placement(t, p, {.hidden = 8, .tokens_per_step = 0});
  const parallel::LayerLoad& l = rep.loads[0];
  EXPECT_EQ(l.tokens_per_rank, (std::vector<int64_t>{4, 4}));
  // Token 0 (rank 0): rank 0 once. Token 1 (rank 1): ranks 0, 1. Token 2 (rank 0): rank 1.
  // Token 3 (rank 1): ranks 0, 1.
  EXPECT_EQ(l.rows_per_rank, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(l.traffic.rows_sent_remote, 3);
  EXPECT_EQ(l.traffic.rows_kept_local, 3);
  EXPECT_EQ(l.traffic.pairs_remote, 4);
  EXPECT_DOUBLE_EQ(rep.cross_rank_rows_per_token(), 0.75);
  EXPECT_DOUBLE_EQ(rep.mean_balancedness, 1.0);
}

// Two nodes of two ranks, rank r holds experts 3r..3r+2; token t lives on rank t.
TEST(PlacementAnalysis, NodeFirstCrossesOncePerDestinationNode) {
  const RoutingTrace t = one_layer_trace(12, 3, {3, 6, 9, 0, 6, 1, 6, 7, 8, 0, 3, 11});
  parallel::Placement p =
      placement_from_lists({{0, {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}, {9, 10, 11}}}}, t, 4, "hand");
  const PlacementReport rep =
      analyze_placement(t, p, {.hidden = 8, .tokens_per_step = 0, .ranks_per_node = 2});
  // Token 0 (rank 0) -> ranks 1, 2, 3: flat 2 inter + 1 intra; node-first 1 inter (to rank 2)
  // + 2 intra (rank 1 directly, rank 3 from rank 2). Token 1 (rank 1) -> ranks 0, 2: flat 1 + 1;
  // node-first 1 inter (to rank 3) + 2 intra (rank 0; rank 2 from rank 3). Token 2 stays home.
  // Token 3 (rank 3) -> ranks 0, 1: flat 2 inter; node-first 1 inter (to rank 1) + 1 intra.
  EXPECT_EQ(rep.nodes.flat_inter_rows, 5);
  EXPECT_EQ(rep.nodes.flat_intra_rows, 2);
  EXPECT_EQ(rep.nodes.node_first_inter_rows, 3);
  EXPECT_EQ(rep.nodes.node_first_intra_rows, 5);
  EXPECT_DOUBLE_EQ(rep.nodes.inter_node_dedup(), 5.0 / 3.0);
  EXPECT_DOUBLE_EQ(rep.inter_node_rows_per_token(true), 0.75);
  // One node: nothing crosses; nodes of one rank: node-first is the flat exchange.
  const PlacementReport one = analyze_placement(t, p, {.hidden = 8, .ranks_per_node = 4});
  EXPECT_EQ(one.nodes.flat_inter_rows, 0);
  EXPECT_EQ(one.nodes.flat_intra_rows, one.traffic.rows_sent_remote);
  const PlacementReport each = analyze_placement(t, p, {.hidden = 8, .ranks_per_node = 1});
  EXPECT_EQ(each.nodes.node_first_inter_rows, each.traffic.rows_sent_remote);
  EXPECT_EQ(each.nodes.node_first_intra_rows, 0);
  const std::string bad = test::expect_error(
      "config", [&] { analyze_placement(t, p, {.hidden = 8, .ranks_per_node = 3}); },
      test::ErrorText::kMessage);
  EXPECT_NE(bad.find("--ranks-per-node 3 does not divide the world size 4"), std::string::npos)
      << bad;
}

TEST(PlacementAnalysis, RejectsAPlacementForAnotherExpertCount) {
  RoutingTrace t = random_trace(1, 10, 8, 2, {0}, 1);
  RoutingTrace other = random_trace(1, 10, 6, 2, {0}, 1);
  parallel::Placement p6 = placement_from_lists(
      fit_placement(other, StrategySpec{.name = "contiguous"}, 2), other, 2, "p6");
  const std::string msg = test::expect_error(
      "placement", [&] { analyze_placement(t, p6, {}); }, test::ErrorText::kMessage);
  EXPECT_NE(msg.find("6 experts but the routing has 8"), std::string::npos) << msg;
  const std::string bad = test::expect_error(
      "config", [&] { fit_placement(t, StrategySpec{.name = "eplb"}, 2); },
      test::ErrorText::kMessage);
  EXPECT_NE(bad.find("unknown strategy 'eplb'"), std::string::npos) << bad;
}

// The targets: zipf(1.2), 128 experts, top-8, 8 ranks, 4096 tokens per rank, fitted on
// the first 32768 tokens and measured on the next 32768 (held out), as the runtime routes.
TEST(PlacementAnalysis, HeldOutZipfBalanceTargetsAtEightRanks) {
  RoutingSpec spec;
  spec.kind = "zipf";
  spec.s = 1.2;
  spec.seed = 5;
  RoutingShape shape{.num_experts = 128, .top_k = 8, .num_layers = 1, .normalise = true};
  SyntheticRouting routing(spec, shape);
  const int64_t per_sample = 8 * 4096;
  RoutingTrace all = generate_trace(routing, {0}, 2 * per_sample);
  RoutingTrace fit = all, held = all;
  fit.ids[0].resize(static_cast<size_t>(per_sample) * 8);
  fit.weights[0].clear();
  held.ids[0].erase(held.ids[0].begin(), held.ids[0].begin() + per_sample * 8);
  held.weights[0].clear();
  auto score = [&](const StrategySpec& s, const RoutingTrace& on) {
    parallel::Placement p = placement_from_lists(fit_placement(fit, s, 8), fit, 8, s.label());
    return analyze_placement(on, p).mean_balancedness;
  };
  const StrategySpec lb{.name = "load_balanced"};
  const StrategySpec rep{.name = "replicated", .redundant = 8};
  EXPECT_GE(score(lb, held), 0.88);
  EXPECT_GE(score(rep, fit), 0.99);
  EXPECT_GE(score(rep, held), 0.98);
  EXPECT_LT(score(StrategySpec{.name = "contiguous"}, held), 0.88);
}

}  // namespace
}  // namespace moe::runtime
