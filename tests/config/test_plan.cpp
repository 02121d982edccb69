// `plan` numbers: the Qwen3-30B-A3B totals pinned from both its YAML and its config.json, a
// small model with dense and MoE layers counted by hand, and the per-rank memory formulas.
#include <gtest/gtest.h>

#include <cmath>

#include "config_test_util.h"
#include "runtime/analysis/plan.h"
#include "runtime/io/config.h"
#include "tests/common/tiny_model.h"

namespace moe::runtime {
namespace {

using moe::testing::config_error;
using moe::testing::write_file;

constexpr int64_t kQwenTotal = 30'532'122'624;
constexpr int64_t kQwenActiveTop8 = 3'353'032'704;
constexpr int64_t kQwenBytes = 61'064'245'248;

ModelConfig qwen_yaml() {
  return load_model_yaml(std::string(MOE_SOURCE_DIR) + "/configs/models/qwen3-30b-a3b.yaml");
}

// Small model counted by hand below: 3 layers, layer 1 dense (mlp_only_layers), layers 0 and 2
// MoE with 4 experts of width 3, top-2.
ModelConfig small_model() {
  return test::tiny_model("small", {.vocab = 10,
                                    .hidden = 4,
                                    .layers = 3,
                                    .heads = 2,
                                    .kv_heads = 1,
                                    .head_dim = 2,
                                    .intermediate = 6,
                                    .moe_intermediate = 3,
                                    .experts = 4,
                                    .top_k = 2,
                                    .dense_layers = {1}});
}
// embedding 10*4 = 40, lm_head 40, final norm 4
// attention per layer: q 4*4 + k 2*4 + v 2*4 + o 4*4 + q_norm 2 + k_norm 2 = 52; x3 = 156
// layer norms 2*4*3 = 24
// router 4*4 per MoE layer x2 = 32; one expert 3*4*3 = 36; experts 4*36*2 = 288
// dense MLP (layer 1) 3*4*6 = 72
// total 40+40+4+156+24+32+288+72 = 656; active at k: 656 - 288 + 2*k*36
constexpr int64_t kSmallTotal = 656;

TEST(PlanCounts, Qwen3YamlTotalsArePinned) {
  ModelConfig c = qwen_yaml();
  EXPECT_EQ(count_params(c).total, kQwenTotal);
  EXPECT_EQ(count_active_params(c, 8), kQwenActiveTop8);
  PlanReport r = make_plan(c, PlanOptions{});
  EXPECT_EQ(r.total_params, kQwenTotal);
  EXPECT_EQ(r.total_bytes, kQwenBytes);
  EXPECT_EQ(r.active_params, kQwenActiveTop8);
  EXPECT_EQ(r.configured_top_k, 8);
  EXPECT_NEAR(r.active_share, 3353032704.0 / 30532122624.0, 1e-12);
}

TEST(PlanCounts, Qwen3ConfigJsonTotalsArePinned) {
  // The fields that matter, as in the HF config.json.
  std::string path = write_file("plan_qwen/config.json", R"({
    "model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "tie_word_embeddings": false})");
  ModelConfig c = load_model_config(path);
  EXPECT_EQ(count_params(c).total, kQwenTotal);
  EXPECT_EQ(count_active_params(c, 8), kQwenActiveTop8);
  {
    // The published config.json of Qwen/Qwen3-30B-A3B, copied into the repository.
    ModelConfig f =
        load_hf_config(std::string(MOE_SOURCE_DIR) + "/tests/fixtures/qwen3-30b-a3b/config.json");
    EXPECT_EQ(count_params(f).total, kQwenTotal);
    EXPECT_EQ(count_active_params(f, 8), kQwenActiveTop8);
  }
}

TEST(PlanCounts, Qwen3BreakdownMatchesTensorShapes) {
  ParamBreakdown p = count_params(qwen_yaml());
  EXPECT_EQ(p.embedding, 151936LL * 2048);
  EXPECT_EQ(p.lm_head, 151936LL * 2048);
  EXPECT_EQ(p.per_expert, 3LL * 2048 * 768);
  EXPECT_EQ(p.experts, 128LL * 48 * 3 * 2048 * 768);
  EXPECT_EQ(p.router, 48LL * 128 * 2048);
  EXPECT_EQ(p.attention, 48LL * (4096 * 2048 * 2 + 512 * 2048 * 2 + 2 * 128));
  EXPECT_EQ(p.dense_mlp, 0);
  EXPECT_EQ(p.num_moe_layers, 48);
  EXPECT_EQ(p.num_dense_layers, 0);
}

TEST(PlanCounts, SmallModelWithDenseLayerCountedByHand) {
  ModelConfig c = small_model();
  ParamBreakdown p = count_params(c);
  EXPECT_EQ(p.num_moe_layers, 2);
  EXPECT_EQ(p.num_dense_layers, 1);
  EXPECT_EQ(p.attention, 156);
  EXPECT_EQ(p.router, 32);
  EXPECT_EQ(p.experts, 288);
  EXPECT_EQ(p.dense_mlp, 72);
  EXPECT_EQ(count_params(c).total, kSmallTotal);
  EXPECT_EQ(count_active_params(c, 1), 656 - 288 + 2 * 1 * 36);
  EXPECT_EQ(count_active_params(c, 2), 656 - 288 + 2 * 2 * 36);
  EXPECT_EQ(count_active_params(c, 4), 656);  // all experts active = everything
}

TEST(PlanCounts, SparseStepMakesDenseLayersWithSwiGluParams) {
  ModelConfig c = small_model();
  c.mlp_only_layers = {};
  c.num_hidden_layers = 4;
  c.decoder_sparse_step = 2;  // MoE layers 1 and 3; dense 0 and 2
  ParamBreakdown p = count_params(c);
  EXPECT_EQ(p.num_moe_layers, 2);
  EXPECT_EQ(p.num_dense_layers, 2);
  EXPECT_EQ(p.dense_mlp, 2 * 3 * 4 * 6);
  EXPECT_EQ(p.total, 40 + 40 + 4 + 52 * 4 + 2 * 4 * 4 + 32 + 288 + 144);
}

TEST(PlanCounts, TiedEmbeddingsCountTheMatrixOnce) {
  ModelConfig c = small_model();
  c.tie_word_embeddings = true;
  EXPECT_EQ(count_params(c).total, kSmallTotal - 40);
  EXPECT_EQ(count_active_params(c, 2), kSmallTotal - 40 - 288 + 144);
  // The tied matrix still does the lm_head matmul.
  PlanReport r = make_plan(c, PlanOptions{});
  // projections (2*4*4 + 2*2*4) x 3 layers + router 32 + 2 layers x k=2 x 36 + dense 72 + 10*4
  EXPECT_EQ(r.matmul_params_per_token, 48 * 3 + 32 + 2 * 2 * 36 + 72 + 40);
}

TEST(PlanCounts, AllDenseModelIsFullyActive) {
  ModelConfig c = small_model();
  c.num_experts = 0;
  c.num_experts_per_tok = 0;
  c.mlp_only_layers = {};
  c.validate();
  EXPECT_EQ(count_params(c).total, 40 + 40 + 4 + 156 + 24 + 3 * 72);
  EXPECT_EQ(count_active_params(c, 0), count_params(c).total);
  PlanReport r = make_plan(c, PlanOptions{});
  ASSERT_EQ(r.active.size(), 1u);
  EXPECT_EQ(r.active[0].top_k, 0);
  EXPECT_DOUBLE_EQ(r.active[0].share, 1.0);
  for (const auto& m : r.ranks) {
    EXPECT_EQ(m.expert_shard_bytes, 0);
    EXPECT_EQ(m.communication_bytes, 0);
  }
}

TEST(PlanCounts, TopKOutsideZeroToExpertsIsAnError) {
  ModelConfig c = small_model();
  config_error([&] { count_active_params(c, 5); });
  config_error([&] { count_active_params(c, -1); });
}

TEST(PlanActive, TableHasPowersOfTwoUpToExpertsPlusConfiguredK) {
  PlanReport q = make_plan(qwen_yaml(), PlanOptions{});
  std::vector<int64_t> ks;
  for (const auto& a : q.active) ks.push_back(a.top_k);
  EXPECT_EQ(ks, (std::vector<int64_t>{1, 2, 4, 8, 16}));
  for (const auto& a : q.active) {
    EXPECT_EQ(a.configured, a.top_k == 8);
    EXPECT_EQ(a.active_params, count_active_params(q.config, a.top_k));
  }

  ModelConfig c = small_model();
  c.num_experts = 8;
  c.num_experts_per_tok = 3;
  PlanReport s = make_plan(c, PlanOptions{});
  ks.clear();
  for (const auto& a : s.active) ks.push_back(a.top_k);
  EXPECT_EQ(ks, (std::vector<int64_t>{1, 2, 3, 4, 8}));
}

TEST(PlanFlops, MatmulParamsExcludeLookupAndNormsAndAttentionUsesContext) {
  PlanOptions o;
  o.context = 4096;
  PlanReport r = make_plan(qwen_yaml(), o);
  const int64_t norms = 48 * (2 * 2048 + 2 * 128) + 2048;
  EXPECT_EQ(r.matmul_params_per_token, kQwenActiveTop8 - 151936LL * 2048 - norms);
  EXPECT_EQ(r.matmul_params_per_token, 3'041'656'832);
  EXPECT_DOUBLE_EQ(r.attention_flops_per_token, 4.0 * 48 * 32 * 128 * 4096);
  EXPECT_DOUBLE_EQ(r.flops_per_token, 2.0 * 3'041'656'832 + 4.0 * 48 * 32 * 128 * 4096);
  o.context = 1;
  EXPECT_DOUBLE_EQ(make_plan(qwen_yaml(), o).attention_flops_per_token, 4.0 * 48 * 32 * 128);
}

TEST(PlanMemory, SmallModelRankTwoMatchesTheStatedFormulas) {
  PlanOptions o;
  o.batch = 3;
  o.context = 5;
  o.ranks = {2};
  o.kv_bytes = 2;
  PlanReport r = make_plan(small_model(), o);
  ASSERT_EQ(r.ranks.size(), 1u);
  const RankMemory& m = r.ranks[0];
  EXPECT_EQ(m.num_ranks, 2);
  EXPECT_EQ(m.expert_slots_per_layer, 2);  // ceil(4 / 2)
  EXPECT_EQ(m.expert_slots, 4);            // x 2 MoE layers
  EXPECT_EQ(m.sequences, 2);               // ceil(3 / 2)
  EXPECT_EQ(m.tokens, 10);
  EXPECT_EQ(m.dense_replica_bytes, (656 - 288) * 2);
  EXPECT_EQ(m.expert_shard_bytes, 4 * 36 * 2);
  EXPECT_EQ(m.kv_cache_bytes, 2 * 3 * 2 * 2 * 5 * 2);  // 2 x layers x kv_width x seqs x ctx x 2
  // send rows 10 * min(k=2, N=2) = 20, recv rows 3 * 5 = 15 (worst case): rows both ways
  // in fp32 plus 8-byte route entries per row and k; the messages: a 256-row slot per peer on
  // both sides (header of 3 + 2 slots ints, 64 bytes aligned; rows of 16 bytes + 2 route entries
  // of 8), the route entries again, a padding row per peer and two headers.
  const int64_t slot = 64 + 256 * (16 + 16);
  EXPECT_EQ(m.communication_bytes, 2 * (20 + 15) * 4 * 4 + (20 + 15) * 2 * 8 + 2 * 2 * slot +
                                       (20 + 15) * 2 * 8 + 2 * 16 + 2 * 64);
  // hidden 3*10*4 + q/out 2*10*4 + k/v 2*10*2 = 240; pairs 15*2 = 30 rows of (2*4 + 3*3) = 510;
  // dense 3*10*6 = 180 -> 930; logits 2*10 + router 10*4 + 2*10*2 = 100; all fp32.
  EXPECT_EQ(m.activation_buffer_bytes, (930 + 100) * 4);
  EXPECT_EQ(m.total_bytes, m.dense_replica_bytes + m.expert_shard_bytes + m.kv_cache_bytes +
                               m.communication_bytes + m.activation_buffer_bytes);
}

// Node-first on nodes of one rank (two nodes): the first level is the flat exchange's shape
// here (one row per destination node = per rank; slots carry 4 expert-id counts, header still
// 64 bytes), plus the proxy's node rows and sums (15 x 16 bytes each) and the node's own
// one-rank level: 15 rows out (15 x min(k, 1)) and 15 in, both ways in fp32, route entries.
TEST(PlanMemory, NodeFirstAddsTheProxyRowsAndTheNodeLevel) {
  PlanOptions o;
  o.batch = 3;
  o.context = 5;
  o.ranks = {2};
  const RankMemory flat = make_plan(small_model(), o).ranks.at(0);
  o.ranks_per_node = 1;
  const RankMemory node_first = make_plan(small_model(), o).ranks.at(0);
  EXPECT_EQ(node_first.communication_bytes - flat.communication_bytes,
            2 * 15 * 16 + (2 * (15 + 15) * 16 + (15 + 15) * 2 * 8));
  o.ranks_per_node = 2;  // one node: nothing node-first
  EXPECT_EQ(make_plan(small_model(), o).ranks.at(0).communication_bytes, flat.communication_bytes);
}

TEST(PlanMemory, FitsComparesTotalWithGpuMemory) {
  PlanOptions o;
  o.batch = 3;
  o.context = 5;
  o.ranks = {2};
  int64_t total = make_plan(small_model(), o).ranks[0].total_bytes;
  o.gpu_mem_gib = static_cast<double>(total) / (1024.0 * 1024.0 * 1024.0);
  EXPECT_TRUE(make_plan(small_model(), o).ranks[0].fits);
  o.gpu_mem_gib = static_cast<double>(total - 1) / (1024.0 * 1024.0 * 1024.0);
  EXPECT_FALSE(make_plan(small_model(), o).ranks[0].fits);
}

TEST(PlanMemory, Qwen3ExpertShardShrinksWithRanksAndFitsAtTwoOn40GiB) {
  PlanOptions o;
  o.gpu_mem_gib = 40;
  PlanReport r = make_plan(qwen_yaml(), o);
  ASSERT_EQ(r.ranks.size(), 4u);
  const int64_t per_expert_bytes = 3LL * 2048 * 768 * 2;
  for (const auto& m : r.ranks) {
    EXPECT_EQ(m.expert_slots_per_layer, (128 + m.num_ranks - 1) / m.num_ranks);
    EXPECT_EQ(m.expert_shard_bytes, m.expert_slots_per_layer * 48 * per_expert_bytes);
    EXPECT_EQ(m.dense_replica_bytes, (kQwenTotal - 128LL * 48 * 3 * 2048 * 768) * 2);
    EXPECT_EQ(m.kv_cache_bytes, 2LL * 48 * 512 * 1 * 4096 * 2);
  }
  EXPECT_FALSE(r.ranks[0].fits);  // 56.9 GiB of weights alone
  EXPECT_TRUE(r.ranks[1].fits);
  EXPECT_TRUE(r.ranks[3].fits);
  EXPECT_GT(r.ranks[0].total_bytes, r.ranks[1].total_bytes);
  EXPECT_GT(r.ranks[1].total_bytes, r.ranks[3].total_bytes);
}

TEST(PlanMemory, BatchIsSpreadOverRanksAndCpuKvIsFp32) {
  PlanOptions o;
  o.batch = 8;
  o.context = 128;
  o.ranks = {1, 8};
  o.kv_bytes = 4;
  PlanReport r = make_plan(qwen_yaml(), o);
  EXPECT_EQ(r.ranks[0].sequences, 8);
  EXPECT_EQ(r.ranks[1].sequences, 1);
  EXPECT_EQ(r.ranks[0].kv_cache_bytes, 2LL * 48 * 512 * 8 * 128 * 4);
  EXPECT_EQ(r.ranks[1].kv_cache_bytes, 2LL * 48 * 512 * 1 * 128 * 4);
}

TEST(PlanMemory, PlacementOverrideUsesTheLargestRank) {
  PlanOptions o;
  o.expert_slots_per_rank = {5, 3};  // 8 slots over 2 MoE layers, unevenly
  o.placement_name = "uneven";
  PlanReport r = make_plan(small_model(), o);
  ASSERT_EQ(r.ranks.size(), 1u);
  EXPECT_EQ(r.ranks[0].num_ranks, 2);
  EXPECT_EQ(r.ranks[0].expert_slots, 5);
  EXPECT_EQ(r.ranks[0].expert_shard_bytes, 5 * 36 * 2);
  EXPECT_NE(format_plan(r).find("uneven"), std::string::npos);
}

TEST(PlanOptionsCheck, BadOptionsAreConfigErrors) {
  ModelConfig c = small_model();
  for (auto edit : std::vector<std::function<void(PlanOptions&)>>{
           [](PlanOptions& o) { o.batch = 0; }, [](PlanOptions& o) { o.context = 0; },
           [](PlanOptions& o) { o.gpu_mem_gib = 0; }, [](PlanOptions& o) { o.ranks = {0}; },
           [](PlanOptions& o) { o.ranks = {}; }, [](PlanOptions& o) { o.kv_bytes = 3; },
           [](PlanOptions& o) {
             o.expert_slots_per_rank = {1, -1};
           }}) {
    PlanOptions o;
    edit(o);
    std::string msg = config_error([&] { make_plan(c, o); });
    EXPECT_NE(msg.find("plan"), std::string::npos) << msg;
  }
}

TEST(PlanFormat, ThousandsSeparators) {
  EXPECT_EQ(with_thousands(0), "0");
  EXPECT_EQ(with_thousands(999), "999");
  EXPECT_EQ(with_thousands(1000), "1,000");
  EXPECT_EQ(with_thousands(-1234567), "-1,234,567");
  EXPECT_EQ(with_thousands(kQwenTotal), "30,532,122,624");
  EXPECT_EQ(with_thousands(INT64_MIN), "-9,223,372,036,854,775,808");
}

TEST(PlanFormat, TextShowsThePinnedTotalsAndEveryRankCount) {
  PlanReport r = make_plan(qwen_yaml(), PlanOptions{});
  std::string s = format_plan(r);
  for (const char* part : {"30,532,122,624", "3,353,032,704", "61,064,245,248", "10.98%",
                           "dense replica", "expert shard", "KV cache", "fits"}) {
    EXPECT_NE(s.find(part), std::string::npos) << part << " missing in:\n" << s;
  }
}

TEST(PlanFormat, JsonCarriesTheSameNumbers) {
  PlanReport r = make_plan(qwen_yaml(), PlanOptions{});
  nlohmann::json j = plan_to_json(r);
  EXPECT_EQ(j["total_params"].get<int64_t>(), kQwenTotal);
  EXPECT_EQ(j["total_bytes"].get<int64_t>(), kQwenBytes);
  EXPECT_EQ(j["active_params"].get<int64_t>(), kQwenActiveTop8);
  ASSERT_EQ(j["ranks"].size(), r.ranks.size());
  for (size_t i = 0; i < r.ranks.size(); ++i) {
    EXPECT_EQ(j["ranks"][i]["total_bytes"].get<int64_t>(), r.ranks[i].total_bytes);
    EXPECT_EQ(j["ranks"][i]["fits"].get<bool>(), r.ranks[i].fits);
  }
  ASSERT_EQ(j["active"].size(), r.active.size());
  EXPECT_EQ(j["active"][3]["top_k"].get<int64_t>(), 8);
  EXPECT_EQ(j["active"][3]["active_params"].get<int64_t>(), kQwenActiveTop8);
}

}  // namespace
}  // namespace moe::runtime
