// Synthetic routing: every kind gives valid rows (ids in range, distinct, weights summing to 1
// when renormalised), the same token gets the same experts however tokens are batched, the
// distributions have the shape they promise (zipf's top share, hotset's share, topics'
// co-activation blocks, drift's moving order), replay returns trace rows bit for bit, and bad
// specs in a run config fail with file:line.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>

#include "runtime/io/run_config.h"
#include "runtime/model/synthetic_routing.h"
#include "tests/checkpoint/safetensors_writer.h"
#include "tests/common/expect_error.h"

namespace moe::runtime {
namespace {

using moe::testing::ScratchDir;

constexpr RoutingShape kShape{128, 8, 4, true};

RoutingSpec spec_of(const std::string& kind) {
  RoutingSpec s;
  s.kind = kind;
  s.seed = 7;
  return s;
}

// Column j of each row of layer `layer` for tokens (0, r), r < T, at `step`.
std::vector<int32_t> rows(const SyntheticRouting& r, int64_t T, int layer = 0, int64_t step = 0) {
  std::vector<int32_t> ids(static_cast<size_t>(T * 8));
  std::vector<float> w(ids.size());
  for (int64_t t = 0; t < T; ++t) {
    r.route_token(step, layer, {0, t}, std::span(ids).subspan(t * 8, 8),
                  std::span(w).subspan(t * 8, 8));
  }
  return ids;
}

// Experts by how often they are the first pick, most frequent first: (count, expert).
std::vector<std::pair<int64_t, int32_t>> first_pick_counts(const std::vector<int32_t>& ids) {
  std::vector<std::pair<int64_t, int32_t>> c(128);
  for (int e = 0; e < 128; ++e) c[e] = {0, e};
  for (size_t i = 0; i < ids.size(); i += 8) ++c[ids[i]].first;
  std::sort(c.rbegin(), c.rend());
  return c;
}

TEST(SyntheticRouting, EveryKindGivesValidNormalisedRows) {
  for (const char* kind : {"uniform", "zipf", "hotset", "drift", "topics"}) {
    for (bool normalise : {true, false}) {
      RoutingShape shape = kShape;
      shape.normalise = normalise;
      RoutingSpec spec = spec_of(kind);
      spec.s = 1.5;
      const SyntheticRouting r(spec, shape);
      for (int64_t t = 0; t < 500; ++t) {
        int32_t ids[8];
        float w[8];
        r.route_token(t / 100, static_cast<int>(t % 4), {t % 3, t}, ids, w);
        double sum = 0;
        for (int j = 0; j < 8; ++j) {
          ASSERT_GE(ids[j], 0) << kind;
          ASSERT_LT(ids[j], 128) << kind;
          for (int q = 0; q < j; ++q) ASSERT_NE(ids[q], ids[j]) << kind << " token " << t;
          ASSERT_GT(w[j], 0.0f) << kind;
          sum += w[j];
        }
        if (normalise) {
          EXPECT_NEAR(sum, 1.0, 1e-6) << kind;
        } else {
          EXPECT_LT(sum, 1.0) << kind;  // the k picks' share of a distribution over 128 experts
        }
      }
    }
  }
}

TEST(SyntheticRouting, SameTokenSameExpertsWhateverTheBatch) {
  const SyntheticRouting a(spec_of("topics"), kShape);
  SyntheticRouting b(spec_of("topics"), kShape);
  // b routes a batch of tokens in another order (as another rank count would split them).
  std::vector<TokenId> tokens;
  for (int64_t t = 0; t < 50; ++t) tokens.push_back({(t * 7) % 5, 49 - t});
  std::vector<int32_t> ids(tokens.size() * 8);
  std::vector<float> w(ids.size());
  b.route(3, 2, tokens, ids, w);
  for (size_t i = 0; i < tokens.size(); ++i) {
    int32_t one[8];
    float ow[8];
    a.route_token(3, 2, tokens[i], one, ow);
    EXPECT_EQ(std::memcmp(one, &ids[i * 8], sizeof one), 0) << i;
    EXPECT_EQ(std::memcmp(ow, &w[i * 8], sizeof ow), 0) << i;
  }
  // And a different seed gives different routing.
  RoutingSpec other = spec_of("topics");
  other.seed = 8;
  EXPECT_NE(rows(SyntheticRouting(other, kShape), 50), rows(a, 50));
}

TEST(SyntheticRouting, ZipfTopExpertShareMatchesTheAnalyticValue) {
  // The first pick is a plain draw from p: the hottest expert's share of first picks is
  // 1 / sum_i (i+1)^-s.
  RoutingSpec spec = spec_of("zipf");
  spec.s = 1.2;
  const SyntheticRouting r(spec, kShape);
  const int64_t T = 20000;
  double harmonic = 0;
  for (int i = 1; i <= 128; ++i) harmonic += std::pow(i, -1.2);
  for (int layer : {0, 1}) {
    const auto counts = first_pick_counts(rows(r, T, layer));
    EXPECT_NEAR(static_cast<double>(counts[0].first) / T, 1.0 / harmonic, 0.015) << layer;
    EXPECT_NEAR(static_cast<double>(counts[1].first) / T, std::pow(2, -1.2) / harmonic, 0.012);
  }
  // A per-layer permutation decides which experts are hot.
  EXPECT_NE(first_pick_counts(rows(r, 2000, 0))[0].second,
            first_pick_counts(rows(r, 2000, 1))[0].second);
}

TEST(SyntheticRouting, HotsetSendsItsShareToTheHotExperts) {
  RoutingSpec spec = spec_of("hotset");
  spec.hot_experts = 4;
  spec.hot_share = 0.6;
  const SyntheticRouting r(spec, kShape);
  const int64_t T = 20000;
  const auto counts = first_pick_counts(rows(r, T));
  int64_t hot = 0;
  for (int i = 0; i < 4; ++i) hot += counts[i].first;
  EXPECT_NEAR(static_cast<double>(hot) / T, 0.6, 0.015);
  // Each of the 4 hot experts is picked in nearly every token's top 8 (4 of 8 picks).
  EXPECT_LT(counts[4].first, counts[3].first / 10);
}

TEST(SyntheticRouting, DriftMovesTheHotOrderEveryPeriod) {
  RoutingSpec spec = spec_of("drift");
  spec.s = 1.2;
  spec.period = 2;
  spec.shift = 1;
  const SyntheticRouting r(spec, kShape);
  const auto step0 = first_pick_counts(rows(r, 8000, 0, 0));
  const auto step1 = first_pick_counts(rows(r, 8000, 0, 1));
  const auto step2 = first_pick_counts(rows(r, 8000, 0, 2));
  EXPECT_EQ(step0[0].second, step1[0].second);  // same period
  EXPECT_EQ(step2[0].second, step0[1].second);  // moved by one popularity rank
}

TEST(SyntheticRouting, TopicsMakeCoactivationBlocks) {
  // Share of an expert's co-activations that fall on its 15 most frequent partners: topics of 16
  // experts concentrate them there; uniform routing spreads them over all 127.
  const auto concentration = [](const std::vector<int32_t>& ids) {
    std::vector<std::vector<int64_t>> co(128, std::vector<int64_t>(128, 0));
    for (size_t i = 0; i < ids.size(); i += 8) {
      for (int a = 0; a < 8; ++a) {
        for (int b = 0; b < 8; ++b) {
          if (a != b) ++co[ids[i + a]][ids[i + b]];
        }
      }
    }
    double share = 0;
    for (auto& row : co) {
      const int64_t total = std::accumulate(row.begin(), row.end(), int64_t{0});
      std::sort(row.rbegin(), row.rend());
      share += static_cast<double>(std::accumulate(row.begin(), row.begin() + 15, int64_t{0})) /
               std::max<int64_t>(total, 1);
    }
    return share / 128;
  };
  RoutingSpec topics = spec_of("topics");  // 8 topics x 16 experts, mix 0.1
  EXPECT_GT(concentration(rows(SyntheticRouting(topics, kShape), 8000)), 0.7);
  EXPECT_LT(concentration(rows(SyntheticRouting(spec_of("uniform"), kShape), 8000)), 0.3);
}

TEST(SyntheticRouting, ReplayReturnsTraceRowsBitForBit) {
  ScratchDir dir;
  RoutingSpec zipf = spec_of("zipf");
  const SyntheticRouting gen(zipf, kShape);
  const RoutingTrace trace = generate_trace(gen, {1, 3}, 30);
  ASSERT_EQ(trace.num_tokens(0), 30);
  const std::string path = (dir / "t.safetensors").string();
  write_trace(path, trace);

  RoutingSpec replay;
  replay.kind = "replay";
  replay.trace = path;
  SyntheticRouting r(replay, kShape);
  EXPECT_EQ(r.trace_rows(), 30);
  int32_t ids[8];
  float w[8];
  r.route_token(0, 3, {0, 17}, ids, w);  // no prompt lengths: row = position
  EXPECT_EQ(std::memcmp(ids, &trace.ids[1][17 * 8], sizeof ids), 0);
  EXPECT_EQ(std::memcmp(w, &trace.weights[1][17 * 8], sizeof w), 0);

  // A run of 3 sequences with prompts of 4, 2, 5 tokens: prefill rows 0..10 by sequence, then
  // one row per sequence per decode step.
  r.set_prompt_lengths({4, 2, 5});
  EXPECT_EQ(r.rows_needed(4), 11 + 3 * 3);
  r.route_token(0, 1, {1, 1}, ids, w);  // sequence 1 position 1 -> row 4 + 1
  EXPECT_EQ(std::memcmp(ids, &trace.ids[0][5 * 8], sizeof ids), 0);
  r.route_token(2, 1, {2, 6}, ids, w);  // step 2, sequence 2 (position 5 + 1) -> 11 + 3 + 2
  EXPECT_EQ(std::memcmp(ids, &trace.ids[0][16 * 8], sizeof ids), 0);
  const std::string msg = test::expect_error(
      "trace",
      [&] {
        r.route_token(9, 1, {0, 12}, ids, w);
      },
      test::ErrorText::kMessage);
  EXPECT_NE(msg.find("trace has 30 token rows"), std::string::npos) << msg;
  const std::string layer_msg = test::expect_error(
      "trace",
      [&] {
        r.route_token(0, 0, {0, 0}, ids, w);
      },
      test::ErrorText::kMessage);
  EXPECT_NE(layer_msg.find("no routing for layer 0"), std::string::npos) << layer_msg;
}

TEST(SyntheticRouting, ImpossibleSpecsFailAtConstruction) {
  RoutingSpec hot = spec_of("hotset");
  hot.hot_experts = 200;
  EXPECT_NE(test::expect_error("config", [&] { SyntheticRouting(hot, kShape); })
                .find("hot_experts 200 exceeds the 128 experts"),
            std::string::npos);
  RoutingSpec topics = spec_of("topics");
  topics.experts_per_topic = 4;
  topics.mix = 0;
  EXPECT_NE(test::expect_error("config", [&] { SyntheticRouting(topics, kShape); })
                .find("cannot pick 8 distinct experts"),
            std::string::npos);
}

// Routing specs in a run config: parsed, and each mistake names file, key and line.
std::string write_run_yaml(const ScratchDir& dir, const std::string& routing) {
  const std::string path = (dir / "run.yaml").string();
  std::ofstream(path) << "model: tiny.yaml\nworkload:\n  num_sequences: 2\n  routing: " << routing
                      << "\n";
  return path;
}

TEST(RoutingSpec, RunConfigReadsRoutingAndRebalance) {
  ScratchDir dir;
  const std::string path = write_run_yaml(dir, "{kind: zipf, s: 1.5, seed: 3}");
  const RunConfig c =
      load_run_config(path, {"rebalance={every: 2, strategy: replicated, redundant: 4}"});
  EXPECT_EQ(c.workload.routing.kind, "zipf");
  EXPECT_EQ(c.workload.routing.s, 1.5);
  EXPECT_EQ(c.workload.routing.seed, 3u);
  EXPECT_EQ(c.rebalance.every, 2);
  EXPECT_EQ(c.rebalance.window, 2);
  EXPECT_EQ(c.rebalance.redundant, 4);
  EXPECT_EQ(load_run_config(path, {}).workload.routing.kind, "zipf");
  EXPECT_TRUE(
      load_run_config(path, {"workload.routing={kind: router}"}).workload.routing.is_router());
}

TEST(RoutingSpec, BadSpecsNameFileKeyAndLine) {
  ScratchDir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{kind: zipff}", "key 'workload.routing.kind': unknown routing kind 'zipff'"},
      {"{kind: uniform, s: 1.2}", "key 'workload.routing.s': unknown key"},
      {"{kind: zipf, s: -1}", "key 'workload.routing.s': must be in [0, 16]"},
      {"{kind: zipf, s: high}", "key 'workload.routing.s': expected a finite number"},
      {"{kind: topics, mix: 2}", "key 'workload.routing.mix': must be in [0, 1]"},
      {"{kind: replay}", "key 'workload.routing.trace': missing required key"},
      {"{s: 1.2}", "key 'workload.routing.kind': missing required key"},
      {"zipf", "key 'workload.routing': expected a mapping"},
  };
  for (const auto& [routing, expected] : cases) {
    const std::string path = write_run_yaml(dir, routing);
    const std::string msg = test::expect_error(
        "config", [&] { load_run_config(path, {}); }, test::ErrorText::kMessage);
    EXPECT_NE(msg.find(path + ":4: " + expected), std::string::npos) << routing << ": " << msg;
  }
  const std::string path = write_run_yaml(dir, "{kind: zipf}");
  const std::string msg = test::expect_error(
      "config", [&] { load_run_config(path, {"rebalance={every: 0}"}); },
      test::ErrorText::kMessage);
  EXPECT_NE(msg.find("rebalance.every': must be >= 1"), std::string::npos) << msg;
}

}  // namespace
}  // namespace moe::runtime
