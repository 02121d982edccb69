// HF config.json loading: the real Qwen3-30B-A3B config (a verbatim copy below) loads to the same
// values as configs/models/qwen3-30b-a3b.yaml; format variants (rope_parameters, eos lists,
// missing head_dim, nulls) are understood; bad files fail naming the file, the key and the line.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "config_test_util.h"
#include "runtime/io/config.h"

namespace moe::runtime {
namespace {

using moe::testing::config_error;
using moe::testing::scratch_dir;
using moe::testing::write_file;
using nlohmann::json;

// Qwen/Qwen3-30B-A3B config.json, verbatim.
constexpr const char* kQwen3Config = R"({
  "architectures": ["Qwen3MoeForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "decoder_sparse_step": 1,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 6144,
  "max_position_embeddings": 40960,
  "max_window_layers": 48,
  "mlp_only_layers": [],
  "model_type": "qwen3_moe",
  "moe_intermediate_size": 768,
  "norm_topk_prob": true,
  "num_attention_heads": 32,
  "num_experts": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 48,
  "num_key_value_heads": 4,
  "output_router_logits": false,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}
)";

// Writes DIR/config.json (a checkpoint directory named `dir`) and returns the file's path.
std::string write_config(const std::string& dir, const std::string& text) {
  return write_file(dir + "/config.json", text);
}

// The Qwen3 config changed by `edit`, pretty-printed one key per line.
std::string edited(const std::function<void(json&)>& edit) {
  json j = json::parse(kQwen3Config);
  edit(j);
  return j.dump(2) + "\n";
}

// 1-based line of the first line containing `needle`.
int line_of(const std::string& text, const std::string& needle) {
  size_t at = text.find(needle);
  if (at == std::string::npos) return 0;
  return 1 + static_cast<int>(
                 std::count(text.begin(), text.begin() + static_cast<ptrdiff_t>(at), '\n'));
}

void expect_same_model(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.decoder_sparse_step, b.decoder_sparse_step);
  EXPECT_EQ(a.mlp_only_layers, b.mlp_only_layers);
  EXPECT_DOUBLE_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_DOUBLE_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
}

TEST(HfConfig, Qwen3ConfigJsonMatchesTheModelYaml) {
  std::string path = write_config("Qwen3-30B-A3B", kQwen3Config);
  ModelConfig hf = load_hf_config(path);
  ModelConfig yaml =
      load_model_yaml(std::string(MOE_SOURCE_DIR) + "/configs/models/qwen3-30b-a3b.yaml");
  expect_same_model(hf, yaml);
  EXPECT_EQ(hf.name, "Qwen3-30B-A3B");  // the checkpoint directory
  EXPECT_EQ(hf.source, path);
  EXPECT_EQ(hf.head_dim, 128);
  EXPECT_EQ(hf.eos_token_id, 151645);
}

TEST(HfConfig, PublishedConfigFileMatchesTheEmbeddedCopy) {
  const std::string fixture =
      std::string(MOE_SOURCE_DIR) + "/tests/fixtures/qwen3-30b-a3b/config.json";
  expect_same_model(load_hf_config(fixture),
                    load_hf_config(write_config("embedded", kQwen3Config)));
}

TEST(HfConfig, DirectoryAndJsonPathBothLoadThroughLoadModelConfig) {
  std::string path = write_config("ckpt_dir", kQwen3Config);
  std::string dir = (scratch_dir() / "ckpt_dir").string();
  EXPECT_EQ(load_model_config(dir).hidden_size, 2048);
  EXPECT_EQ(load_model_config(path).num_experts, 128);
  EXPECT_EQ(load_model_config(dir).source, (std::filesystem::path(dir) / "config.json").string());
}

TEST(HfConfig, RopeParametersReplaceRopeTheta) {
  std::string path =
      write_config("rope_params", edited([](json& j) {
                     j.erase("rope_theta");
                     j["rope_parameters"] = {{"rope_theta", 5e6}, {"rope_type", "default"}};
                   }));
  EXPECT_DOUBLE_EQ(load_hf_config(path).rope_theta, 5e6);
}

TEST(HfConfig, RopeThetaAsIntegerIsAccepted) {
  std::string path = write_config("rope_int", edited([](json& j) { j["rope_theta"] = 1000000; }));
  EXPECT_DOUBLE_EQ(load_hf_config(path).rope_theta, 1e6);
}

TEST(HfConfig, EosListTakesTheFirstId) {
  std::string path = write_config("eos_list", edited([](json& j) {
                                    j["eos_token_id"] = {151645, 151643};
                                  }));
  EXPECT_EQ(load_hf_config(path).eos_token_id, 151645);
}

TEST(HfConfig, MissingHeadDimDefaultsToHiddenOverHeads) {
  std::string path = write_config("no_head_dim", edited([](json& j) { j.erase("head_dim"); }));
  EXPECT_EQ(load_hf_config(path).head_dim, 2048 / 32);
}

TEST(HfConfig, NullsAndOptionalKeysTakeDefaults) {
  std::string path = write_config("nulls", edited([](json& j) {
                                    j["bos_token_id"] = nullptr;
                                    j["mlp_only_layers"] = nullptr;
                                    j.erase("max_position_embeddings");
                                    j.erase("norm_topk_prob");
                                    j.erase("decoder_sparse_step");
                                    j.erase("tie_word_embeddings");
                                    j.erase("rope_theta");
                                  }));
  ModelConfig c = load_hf_config(path);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_FALSE(c.norm_topk_prob);  // HF Qwen3MoeConfig default
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
}

TEST(HfConfig, DenseLayersAndTiedEmbeddingsAreRead) {
  std::string path = write_config("dense_layers", edited([](json& j) {
                                    j["mlp_only_layers"] = {0, 47};
                                    j["decoder_sparse_step"] = 2;
                                    j["tie_word_embeddings"] = true;
                                  }));
  ModelConfig c = load_hf_config(path);
  EXPECT_EQ(c.mlp_only_layers, (std::vector<int64_t>{0, 47}));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.layer_is_moe(0));
  EXPECT_TRUE(c.layer_is_moe(1));
  EXPECT_FALSE(c.layer_is_moe(2));
  EXPECT_FALSE(c.layer_is_moe(47));
  EXPECT_TRUE(c.layer_is_moe(45));
}

// ---- bad files ----------------------------------------------------------------------------

TEST(HfConfigErrors, MissingFileNamesThePath) {
  std::string path = (scratch_dir() / "nowhere" / "config.json").string();
  std::string msg = config_error([&] { load_hf_config(path); });
  EXPECT_NE(msg.find(path + ": file not found"), std::string::npos) << msg;
}

TEST(HfConfigErrors, NotJsonNamesTheLine) {
  std::string path =
      write_config("not_json", "{\n  \"hidden_size\": 2048,\n  \"vocab_size\": ,\n}\n");
  std::string msg = config_error([&] { load_hf_config(path); });
  EXPECT_NE(msg.find(path + ":3: not valid JSON"), std::string::npos) << msg;
}

TEST(HfConfigErrors, EmptyFileIsNotJson) {
  std::string path = write_config("empty_json", "");
  std::string msg = config_error([&] { load_hf_config(path); });
  EXPECT_NE(msg.find(path + ":1: not valid JSON"), std::string::npos) << msg;
}

TEST(HfConfigErrors, TopLevelArrayIsRejected) {
  std::string path = write_config("array_json", "[1, 2]\n");
  std::string msg = config_error([&] { load_hf_config(path); });
  EXPECT_NE(msg.find(path + ": expected a JSON object"), std::string::npos) << msg;
}

TEST(HfConfigErrors, MissingKeyNamesTheKey) {
  std::string path =
      write_config("missing_experts", edited([](json& j) { j.erase("num_experts"); }));
  std::string msg = config_error([&] { load_hf_config(path); });
  // A missing key is reported at the object that lacks it (the top level, line 1).
  EXPECT_NE(msg.find(path + ":1: key 'num_experts': missing required key"), std::string::npos)
      << msg;
}

struct BadJson {
  std::string name;
  std::function<void(json&)> edit;
  std::string key;      // named in the message
  std::string line_of;  // text whose line the message must give (the offending value's)
  std::string fragment;
};

void PrintTo(const BadJson& c, std::ostream* os) {
  *os << c.name;
}

class BadHfConfig : public ::testing::TestWithParam<BadJson> {};

TEST_P(BadHfConfig, FailsNamingFileKeyAndLine) {
  const BadJson& bc = GetParam();
  std::string text = edited(bc.edit);
  std::string path = write_config("bad_" + bc.name, text);
  std::string msg = config_error([&] { load_hf_config(path); });
  int line = line_of(text, bc.line_of);
  ASSERT_GT(line, 0) << bc.line_of;
  std::string where = fmt::format("{}:{}: key '{}'", path, line, bc.key);
  EXPECT_NE(msg.find(where), std::string::npos) << "expected '" << where << "' in: " << msg;
  EXPECT_NE(msg.find(bc.fragment), std::string::npos)
      << "expected '" << bc.fragment << "' in: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    AllCases, BadHfConfig,
    ::testing::Values(
        BadJson{"string_where_int_expected", [](json& j) { j["hidden_size"] = "2048"; },
                "hidden_size", "\"hidden_size\"", "expected an integer, got string \"2048\""},
        BadJson{"float_where_int_expected", [](json& j) { j["num_experts"] = 128.5; },
                "num_experts", "\"num_experts\":", "expected an integer"},
        BadJson{"list_where_scalar_expected", [](json& j) { j["num_hidden_layers"] = {48}; },
                "num_hidden_layers", "\"num_hidden_layers\"", "expected an integer, got a list"},
        BadJson{"string_where_bool_expected", [](json& j) { j["norm_topk_prob"] = "true"; },
                "norm_topk_prob", "\"norm_topk_prob\"", "expected true or false"},
        BadJson{"string_where_number_expected", [](json& j) { j["rms_norm_eps"] = "1e-6"; },
                "rms_norm_eps", "\"rms_norm_eps\"", "expected a finite number"},
        BadJson{"bad_list_element",
                [](json& j) {
                  j["mlp_only_layers"] = {1, "2"};
                },
                "mlp_only_layers[1]", "\"2\"", "expected an integer, got string \"2\""},
        BadJson{"bad_eos_list_element", [](json& j) { j["eos_token_id"] = {"x"}; },
                "eos_token_id[0]", "\"x\"", "expected an integer, got string \"x\""},
        BadJson{"topk_exceeds_experts", [](json& j) { j["num_experts_per_tok"] = 200; },
                "num_experts_per_tok", "\"num_experts_per_tok\"",
                "200 > num_experts 128 (top-k cannot exceed the number of experts)"},
        BadJson{"heads_not_divisible", [](json& j) { j["num_key_value_heads"] = 5; },
                "num_key_value_heads", "\"num_key_value_heads\"", "not divisible"},
        BadJson{"odd_head_dim", [](json& j) { j["head_dim"] = 127; }, "head_dim", "\"head_dim\"",
                "odd"},
        BadJson{"zero_vocab", [](json& j) { j["vocab_size"] = 0; }, "vocab_size", "\"vocab_size\"",
                "must be >= 1"},
        BadJson{"mlp_only_layer_out_of_range", [](json& j) { j["mlp_only_layers"] = {48}; },
                "mlp_only_layers[0]", "\"mlp_only_layers\"", "layer 48 is out of range [0, 48)"},
        BadJson{"rope_scaling_given",
                [](json& j) {
                  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
                },
                "rope_scaling", "\"rope_scaling\"", "not supported"},
        BadJson{"rope_parameters_not_an_object", [](json& j) { j["rope_parameters"] = 5; },
                "rope_parameters", "\"rope_parameters\"", "expected a mapping (an object)"},
        BadJson{"rope_parameters_without_theta",
                [](json& j) {
                  j.erase("rope_theta");
                  j["rope_parameters"] = {{"rope_type", "default"}};
                },
                "rope_parameters.rope_theta", "\"rope_parameters\"", "missing required key"},
        BadJson{"rope_parameters_string_theta",
                [](json& j) {
                  j.erase("rope_theta");
                  j["rope_parameters"] = {{"rope_theta", "1e6"}};
                },
                "rope_parameters.rope_theta", "\"rope_theta\"", "expected a finite number"},
        BadJson{"sliding_window_attention", [](json& j) { j["use_sliding_window"] = true; },
                "use_sliding_window", "\"use_sliding_window\"", "not supported"},
        BadJson{"other_model_type", [](json& j) { j["model_type"] = "qwen2_moe"; }, "model_type",
                "\"model_type\"", "'qwen2_moe' is not supported"}),
    [](const ::testing::TestParamInfo<BadJson>& info) { return info.param.name; });

}  // namespace
}  // namespace moe::runtime
