// FP8 configs: config.json's quantization_config as the published FP8 checkpoints write it is
// read; every value moe-ep does not read (fmt, block size, method, activation scheme, unknown
// key) fails naming the key; which tensors it makes e4m3; and `plan` sizes FP8 weights (the
// Qwen3-30B-A3B FP8 checkpoint on 2 x 24 GB cards).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "config_test_util.h"
#include "runtime/analysis/plan.h"
#include "runtime/io/config.h"

namespace moe::runtime {
namespace {

using moe::testing::config_error;
using moe::testing::write_file;
using nlohmann::json;

json moe128_config_json() {
  std::ifstream in(std::string(MOE_SOURCE_DIR) + "/tests/fixtures/hf/moe128/config.json");
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str());
}

// The moe128 fixture's config.json with `edit` applied to its quantization_config (published
// form), written as DIR/config.json.
std::string fp8_config(const std::string& dir, const std::function<void(json&)>& edit) {
  json j = moe128_config_json();
  j["quantization_config"] = {{"activation_scheme", "dynamic"},
                              {"fmt", "e4m3"},
                              {"quant_method", "fp8"},
                              {"weight_block_size", {128, 128}},
                              {"modules_to_not_convert", {"lm_head", "model.layers.0.mlp.gate"}}};
  edit(j["quantization_config"]);
  return write_file(dir + "/config.json", j.dump(2) + "\n");
}

TEST(Fp8Config, PublishedQuantizationConfigIsRead) {
  const ModelConfig c = load_hf_config(fp8_config("fp8_ok", [](json&) {}));
  EXPECT_TRUE(c.quantization.fp8);
  EXPECT_EQ(c.quantization.modules_to_not_convert,
            (std::vector<std::string>{"lm_head", "model.layers.0.mlp.gate"}));
}

TEST(Fp8Config, NoQuantizationConfigMeansBf16) {
  json j = moe128_config_json();
  EXPECT_FALSE(load_hf_config(write_file("fp8_none/config.json", j.dump())).quantization.fp8);
}

struct BadQuantization {
  std::string name;
  std::function<void(json&)> edit;
  std::string key, says;
};

TEST(Fp8Config, EachUnreadValueFailsNamingTheKey) {
  const std::vector<BadQuantization> cases = {
      {"fmt", [](json& q) { q["fmt"] = "e5m2"; }, "quantization_config.fmt", "only e4m3"},
      {"block",
       [](json& q) {
         q["weight_block_size"] = {64, 64};
       },
       "quantization_config.weight_block_size", "only [128, 128]"},
      {"method", [](json& q) { q["quant_method"] = "gptq"; }, "quantization_config.quant_method",
       "'gptq' is not supported"},
      {"no_method", [](json& q) { q.erase("quant_method"); }, "quantization_config.quant_method",
       "missing"},
      {"static", [](json& q) { q["activation_scheme"] = "static"; },
       "quantization_config.activation_scheme", "only dynamic"},
      {"unknown", [](json& q) { q["bits"] = 8; }, "quantization_config.bits", "not understood"},
      {"not_list", [](json& q) { q["modules_to_not_convert"] = "lm_head"; },
       "quantization_config.modules_to_not_convert", "expected a list"},
  };
  for (const BadQuantization& b : cases) {
    const std::string path = fp8_config("fp8_bad_" + b.name, b.edit);
    const std::string msg = config_error([&] { load_hf_config(path); });
    EXPECT_NE(msg.find(path), std::string::npos) << b.name << ": " << msg;
    EXPECT_NE(msg.find(b.key), std::string::npos) << b.name << ": " << msg;
    EXPECT_NE(msg.find(b.says), std::string::npos) << b.name << ": " << msg;
  }
}

TEST(Fp8Config, LinearWeightsOfDecoderLayersAreE4m3ExceptModulesNotConverted) {
  WeightQuantization q;
  q.fp8 = true;
  q.modules_to_not_convert = {"lm_head", "model.layers.0.mlp.gate", "self_attn.o_proj"};
  EXPECT_TRUE(q.quantizes("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(q.quantizes("model.layers.1.mlp.experts.7.down_proj.weight"));
  EXPECT_TRUE(q.quantizes("model.layers.1.mlp.experts.gate_up_proj"));  // fused
  EXPECT_TRUE(q.quantizes("model.layers.1.mlp.gate.weight"));  // layer 1's router is not named
  EXPECT_FALSE(q.quantizes("model.layers.0.mlp.gate.weight"));
  EXPECT_TRUE(q.quantizes("model.layers.0.mlp.gate_proj.weight"));  // "mlp.gate" is not a prefix
  EXPECT_FALSE(q.quantizes("model.layers.2.self_attn.o_proj.weight"));
  EXPECT_FALSE(q.quantizes("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(q.quantizes("model.embed_tokens.weight"));
  EXPECT_FALSE(q.quantizes("lm_head.weight"));
  EXPECT_FALSE(WeightQuantization().quantizes("model.layers.0.self_attn.q_proj.weight"));
}

TEST(Fp8Plan, Qwen3FitsTwo24GbCardsWithFp8AndNeedsFourWithBf16) {
  ModelConfig c =
      load_model_yaml(std::string(MOE_SOURCE_DIR) + "/configs/models/qwen3-30b-a3b.yaml");
  PlanOptions o;
  o.gpu_mem_gib = 24;
  o.ranks = {1, 2, 4};
  const PlanReport bf16 = make_plan(c, o);
  c.quantization = WeightQuantization::published_fp8();
  const PlanReport fp8 = make_plan(c, o);
  // Every linear weight of the layers but the routers: 1 byte + 4 bytes per 128 x 128 block.
  const int64_t blocks_per_expert = 3 * 6 * 16;  // [768, 2048] twice and [2048, 768]
  const int64_t attention_blocks = 32 * 16 + 2 * 4 * 16 + 16 * 32;
  const int64_t expert_weights = 128LL * 48 * 3 * 768 * 2048;
  const int64_t attention_weights = 48LL * (4096 * 2048 * 2 + 512 * 2048 * 2);
  EXPECT_EQ(
      bf16.total_bytes - fp8.total_bytes,
      expert_weights + attention_weights - 4 * 48 * (128 * blocks_per_expert + attention_blocks));
  EXPECT_EQ(fp8.total_bytes, 31'174'545'408);  // the published checkpoint: about 31 GB
  EXPECT_FALSE(bf16.ranks[1].fits);
  EXPECT_TRUE(fp8.ranks[1].fits);
  EXPECT_FALSE(fp8.ranks[0].fits);
  EXPECT_TRUE(bf16.ranks[2].fits);
  EXPECT_EQ(fp8.ranks[1].expert_shard_bytes, 64LL * 48 * (3 * 768 * 2048 + 4 * blocks_per_expert));
}

}  // namespace
}  // namespace moe::runtime
