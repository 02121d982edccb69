// Model YAML loading: the checked-in models load with their exact values, optional keys take
// HF's defaults, and every bad file gives one config error naming the file, the key and the line.
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <vector>

#include "config_test_util.h"
#include "runtime/io/config.h"

namespace moe::runtime {
namespace {

using moe::testing::config_error;
using moe::testing::scratch_dir;
using moe::testing::write_file;

class RemoveScratch : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(scratch_dir(), ec);
  }
};
const auto* const kRemoveScratch = ::testing::AddGlobalTestEnvironment(new RemoveScratch);

std::string model_path(const std::string& name) {
  return std::string(MOE_SOURCE_DIR) + "/configs/models/" + name;
}

// A valid small model, one key per line in this order (line = index + 1).
const std::vector<std::pair<std::string, std::string>> kBase = {
    {"vocab_size", "512"},               // 1
    {"hidden_size", "64"},               // 2
    {"num_hidden_layers", "3"},          // 3
    {"num_attention_heads", "4"},        // 4
    {"num_key_value_heads", "2"},        // 5
    {"head_dim", "16"},                  // 6
    {"intermediate_size", "128"},        // 7
    {"moe_intermediate_size", "32"},     // 8
    {"num_experts", "8"},                // 9
    {"num_experts_per_tok", "2"},        // 10
    {"norm_topk_prob", "true"},          // 11
    {"decoder_sparse_step", "1"},        // 12
    {"mlp_only_layers", "[]"},           // 13
    {"rms_norm_eps", "1.0e-6"},          // 14
    {"rope_theta", "10000.0"},           // 15
    {"max_position_embeddings", "256"},  // 16
    {"tie_word_embeddings", "false"},    // 17
    {"eos_token_id", "2"},               // 18
};

int base_line(const std::string& key) {
  for (size_t i = 0; i < kBase.size(); ++i) {
    if (kBase[i].first == key) return static_cast<int>(i) + 1;
  }
  return 0;
}

// kBase with some values replaced (std::nullopt removes the key, keeping the other lines in
// place by writing a comment line instead) and extra lines appended.
std::string base_yaml(const std::map<std::string, std::optional<std::string>>& changes = {},
                      const std::string& extra = "") {
  std::string out;
  for (const auto& [key, value] : kBase) {
    auto it = changes.find(key);
    if (it == changes.end()) {
      out += key + ": " + value + "\n";
    } else if (it->second) {
      out += key + ": " + *it->second + "\n";
    } else {
      out += "# " + key + " removed\n";
    }
  }
  for (const auto& [key, value] : changes) {
    if (value && base_line(key) == 0) out += key + ": " + *value + "\n";
  }
  return out + extra;
}

TEST(ModelYaml, TinyLoadsWithItsValues) {
  ModelConfig c = load_model_yaml(model_path("tiny.yaml"));
  EXPECT_EQ(c.name, "tiny");
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_GE(c.num_hidden_layers, 2);
  EXPECT_LE(c.num_hidden_layers, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_attention_heads % c.num_key_value_heads, 0);
  EXPECT_LE(c.vocab_size, 1024);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.seed, 1234u);
  EXPECT_EQ(c.source, model_path("tiny.yaml"));
  for (bool moe : c.moe_layers()) EXPECT_TRUE(moe);
}

TEST(ModelYaml, MidLoadsAndIsLargerThanTiny) {
  ModelConfig mid = load_model_yaml(model_path("mid.yaml"));
  ModelConfig tiny = load_model_yaml(model_path("tiny.yaml"));
  EXPECT_EQ(mid.name, "mid");
  EXPECT_GT(mid.hidden_size, tiny.hidden_size);
  EXPECT_GT(mid.num_experts, 0);
  EXPECT_LE(mid.num_experts_per_tok, mid.num_experts);
}

TEST(ModelYaml, Qwen3ThirtyBHasTheRealDimensions) {
  ModelConfig c = load_model_yaml(model_path("qwen3-30b-a3b.yaml"));
  EXPECT_EQ(c.name, "qwen3-30b-a3b");
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 48);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_width(), 4096);
  EXPECT_EQ(c.kv_width(), 512);
  EXPECT_EQ(c.intermediate_size, 6144);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.max_position_embeddings, 40960);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.eos_token_id, 151645);
}

TEST(ModelYaml, BaseFixtureLoadsAndRecordsKeyLines) {
  std::string path = write_file("base.yaml", base_yaml());
  ModelConfig c = load_model_yaml(path);
  EXPECT_EQ(c.name, "base");  // file stem when `name` is absent
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.key_lines.at("num_experts_per_tok"), 10);
  EXPECT_EQ(c.key_lines.at("vocab_size"), 1);
}

TEST(ModelYaml, OptionalKeysTakeHfDefaults) {
  std::string path =
      write_file("defaults.yaml",
                 "vocab_size: 100\nhidden_size: 96\nnum_hidden_layers: 2\nnum_attention_heads: 6\n"
                 "num_key_value_heads: 3\nintermediate_size: 32\nmoe_intermediate_size: 16\n"
                 "num_experts: 4\nnum_experts_per_tok: 2\n");
  ModelConfig c = load_model_yaml(path);
  EXPECT_EQ(c.head_dim, 16);  // hidden_size / num_attention_heads
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.decoder_sparse_step, 1);
  EXPECT_TRUE(c.mlp_only_layers.empty());
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.eos_token_id, -1);
  EXPECT_EQ(c.seed, 0u);
}

TEST(ModelYaml, NameSeedRopeParametersEosListAndHfExtrasAreRead) {
  std::string path = write_file(
      "extras.yaml", base_yaml({{"rope_theta", std::nullopt}, {"eos_token_id", "[7, 3]"}},
                               "name: my-model\nseed: 99\nrope_parameters: {rope_theta: 5000.0, "
                               "rope_type: default}\ntorch_dtype: bfloat16\nhidden_act: silu\n"
                               "rope_scaling: null\narchitectures: [Qwen3MoeForCausalLM]\n"));
  ModelConfig c = load_model_yaml(path);
  EXPECT_EQ(c.name, "my-model");
  EXPECT_EQ(c.seed, 99u);
  EXPECT_DOUBLE_EQ(c.rope_theta, 5000.0);
  EXPECT_EQ(c.eos_token_id, 7);
}

TEST(ModelYaml, AllDenseModelWithZeroExpertsIsAllowed) {
  std::string path = write_file("dense.yaml", base_yaml({{"num_experts", "0"},
                                                         {"num_experts_per_tok", "0"},
                                                         {"moe_intermediate_size", "0"}}));
  ModelConfig c = load_model_yaml(path);
  EXPECT_EQ(c.num_experts, 0);
  for (bool moe : c.moe_layers()) EXPECT_FALSE(moe);
}

TEST(ModelYaml, SparseStepAndMlpOnlyLayersPickDenseLayersLikeHf) {
  std::string path = write_file("step.yaml", base_yaml({{"num_hidden_layers", "6"},
                                                        {"decoder_sparse_step", "2"},
                                                        {"mlp_only_layers", "[3]"}}));
  ModelConfig c = load_model_yaml(path);
  // Sparse when (l + 1) % 2 == 0 and l not in mlp_only_layers: layers 1 and 5.
  EXPECT_EQ(c.moe_layers(), (std::vector<bool>{false, true, false, false, false, true}));
  EXPECT_TRUE(c.layer_is_moe(1));
  EXPECT_FALSE(c.layer_is_moe(3));
}

TEST(ModelYaml, LoadModelConfigDispatchesOnPathKind) {
  EXPECT_EQ(load_model_config(model_path("tiny.yaml")).name, "tiny");
  std::string dir = (scratch_dir() / "empty_ckpt").string();
  std::filesystem::create_directories(dir);
  std::string msg = config_error([&] { load_model_config(dir); });
  EXPECT_NE(
      msg.find(dir + ": no config.json (expected an HF checkpoint directory or a model YAML)"),
      std::string::npos)
      << msg;
}

// ---- bad files ----------------------------------------------------------------------------

TEST(ModelYamlErrors, MissingFileNamesThePath) {
  std::string path = (scratch_dir() / "does_not_exist.yaml").string();
  std::string msg = config_error([&] { load_model_yaml(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;
  // Through the dispatching loader too.
  msg = config_error([&] { load_model_config(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

TEST(ModelYamlErrors, SyntaxErrorNamesFileAndLine) {
  std::string path =
      write_file("syntax.yaml", "vocab_size: 512\nhidden_size: 64\nnum_experts: [1, 2\n");
  std::string msg = config_error([&] { load_model_yaml(path); });
  EXPECT_NE(msg.find(path + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not valid YAML"), std::string::npos) << msg;
}

TEST(ModelYamlErrors, TopLevelListIsNotAMapping) {
  std::string path = write_file("list.yaml", "- vocab_size\n- 512\n");
  std::string msg = config_error([&] { load_model_yaml(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("mapping"), std::string::npos) << msg;
}

TEST(ModelYamlErrors, EmptyFileIsNotAMapping) {
  std::string path = write_file("empty.yaml", "");
  std::string msg = config_error([&] { load_model_yaml(path); });
  EXPECT_NE(msg.find("mapping"), std::string::npos) << msg;
}

// One bad value (or key) in the base file -> an error at "<file>:<line>: key '<key>'".
struct BadCase {
  std::string name;
  std::map<std::string, std::optional<std::string>> changes;
  std::string key;       // as named in the message
  int line;              // expected line
  std::string fragment;  // part of the message
};

void PrintTo(const BadCase& c, std::ostream* os) {
  *os << c.name;
}

class BadModelYaml : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadModelYaml, FailsNamingFileKeyAndLine) {
  const BadCase& bc = GetParam();
  std::string path = write_file("bad_" + bc.name + ".yaml", base_yaml(bc.changes));
  std::string msg = config_error([&] { load_model_yaml(path); });
  std::string where = fmt::format("{}:{}: key '{}'", path, bc.line, bc.key);
  EXPECT_NE(msg.find(where), std::string::npos) << "expected '" << where << "' in: " << msg;
  EXPECT_NE(msg.find(bc.fragment), std::string::npos)
      << "expected '" << bc.fragment << "' in: " << msg;
  // One line: a single clear message.
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  // The same message through the dispatching loader.
  EXPECT_EQ(config_error([&] { load_model_config(path); }), msg);
}

const int kAppended = static_cast<int>(kBase.size()) + 1;

const std::vector<BadCase> kBadCases = {
    BadCase{"missing_required_key",
            {{"hidden_size", std::nullopt}},
            "hidden_size",
            1,
            "missing required key"},
    BadCase{"string_where_int_expected",
            {{"hidden_size", "sixty-four"}},
            "hidden_size",
            2,
            "expected an integer, got 'sixty-four'"},
    BadCase{"float_where_int_expected",
            {{"num_hidden_layers", "2.5"}},
            "num_hidden_layers",
            3,
            "expected an integer"},
    BadCase{"list_where_scalar_expected",
            {{"num_experts", "[8]"}},
            "num_experts",
            9,
            "expected an integer"},
    BadCase{"mapping_where_scalar_expected",
            {{"rope_theta", "{a: 1}"}},
            "rope_theta",
            15,
            "expected a finite number"},
    BadCase{"int_where_bool_expected",
            {{"norm_topk_prob", "3"}},
            "norm_topk_prob",
            11,
            "expected true or false"},
    BadCase{"scalar_where_list_expected",
            {{"mlp_only_layers", "2"}},
            "mlp_only_layers",
            13,
            "expected a list of integers"},
    BadCase{"non_integer_list_element",
            {{"mlp_only_layers", "[0, x]"}},
            "mlp_only_layers[1]",
            13,
            "expected an integer, got 'x'"},
    BadCase{"unknown_key_typo",
            {{"num_expert", "8"}},
            "num_expert",
            kAppended,
            "unknown key (did you mean 'num_experts'?)"},
    BadCase{"unknown_key_unlike_any",
            {{"foo_bar_baz", "1"}},
            "foo_bar_baz",
            kAppended,
            "unknown key (model YAML keys"},
    BadCase{"topk_exceeds_experts",
            {{"num_experts_per_tok", "9"}},
            "num_experts_per_tok",
            10,
            "9 > num_experts 8 (top-k cannot exceed the number of experts)"},
    BadCase{"topk_zero_with_experts",
            {{"num_experts_per_tok", "0"}},
            "num_experts_per_tok",
            10,
            "0 < 1"},
    BadCase{"topk_negative",
            {{"num_experts_per_tok", "-2"}},
            "num_experts_per_tok",
            10,
            "must be >= 0, got -2"},
    BadCase{"heads_not_divisible_by_kv_heads",
            {{"num_key_value_heads", "3"}},
            "num_key_value_heads",
            5,
            "num_attention_heads 4 is not divisible by num_key_value_heads 3"},
    BadCase{"zero_hidden_size", {{"hidden_size", "0"}}, "hidden_size", 2, "must be >= 1, got 0"},
    BadCase{"negative_layers",
            {{"num_hidden_layers", "-1"}},
            "num_hidden_layers",
            3,
            "must be >= 1, got -1"},
    BadCase{"zero_heads",
            {{"num_attention_heads", "0"}},
            "num_attention_heads",
            4,
            "must be >= 1, got 0"},
    BadCase{"zero_kv_heads",
            {{"num_key_value_heads", "0"}},
            "num_key_value_heads",
            5,
            "must be >= 1, got 0"},
    BadCase{"zero_head_dim", {{"head_dim", "0"}}, "head_dim", 6, "must be >= 1, got 0"},
    BadCase{"negative_expert_width",
            {{"moe_intermediate_size", "-5"}},
            "moe_intermediate_size",
            8,
            "must be >= 0, got -5"},
    BadCase{"negative_experts", {{"num_experts", "-1"}}, "num_experts", 9, "must be >= 0, got -1"},
    BadCase{"zero_vocab", {{"vocab_size", "0"}}, "vocab_size", 1, "must be >= 1, got 0"},
    BadCase{"absurd_dimension", {{"hidden_size", "4294967296"}}, "hidden_size", 2, "too large"},
    BadCase{"odd_head_dim", {{"head_dim", "15"}}, "head_dim", 6, "15 is odd"},
    BadCase{"zero_rms_norm_eps", {{"rms_norm_eps", "0"}}, "rms_norm_eps", 14, "must be > 0"},
    BadCase{
        "negative_rms_norm_eps", {{"rms_norm_eps", "-1e-6"}}, "rms_norm_eps", 14, "must be > 0"},
    BadCase{"zero_rope_theta", {{"rope_theta", "0"}}, "rope_theta", 15, "must be > 0"},
    BadCase{"infinite_rope_theta",
            {{"rope_theta", ".inf"}},
            "rope_theta",
            15,
            "expected a finite number"},
    BadCase{"zero_decoder_sparse_step",
            {{"decoder_sparse_step", "0"}},
            "decoder_sparse_step",
            12,
            "must be >= 1, got 0"},
    BadCase{"mlp_only_layer_out_of_range",
            {{"mlp_only_layers", "[0, 3]"}},
            "mlp_only_layers[1]",
            13,
            "layer 3 is out of range [0, 3)"},
    BadCase{"negative_mlp_only_layer",
            {{"mlp_only_layers", "[-1]"}},
            "mlp_only_layers[0]",
            13,
            "out of range"},
    BadCase{"dense_layer_without_intermediate_size",
            {{"mlp_only_layers", "[1]"}, {"intermediate_size", "0"}},
            "intermediate_size",
            7,
            "layers [1] are dense"},
    BadCase{"sparse_step_dense_layers_without_intermediate_size",
            {{"decoder_sparse_step", "2"}, {"intermediate_size", "0"}},
            "intermediate_size",
            7,
            "layers [0, 2] are dense"},
    BadCase{"no_experts_without_intermediate_size",
            {{"num_experts", "0"}, {"num_experts_per_tok", "0"}, {"intermediate_size", "0"}},
            "intermediate_size",
            7,
            "dense"},
    BadCase{"moe_layers_without_expert_width",
            {{"moe_intermediate_size", "0"}},
            "moe_intermediate_size",
            8,
            "MoE layers and need an expert width"},
    BadCase{"zero_max_position_embeddings",
            {{"max_position_embeddings", "0"}},
            "max_position_embeddings",
            16,
            "must be >= 1"},
    BadCase{"eos_outside_vocab",
            {{"eos_token_id", "512"}},
            "eos_token_id",
            18,
            "512 is not a token id in [0, vocab_size 512)"},
    BadCase{"negative_seed", {{"seed", "-1"}}, "seed", kAppended, "must be >= 0"},
    BadCase{"unsupported_activation",
            {{"hidden_act", "gelu"}},
            "hidden_act",
            kAppended,
            "'gelu' is not supported"},
    BadCase{"rope_scaling_given",
            {{"rope_scaling", "{type: yarn, factor: 4}"}},
            "rope_scaling",
            kAppended,
            "not supported"},
    BadCase{
        "rope_type_not_default",
        {{"rope_theta", std::nullopt}, {"rope_parameters", "{rope_theta: 1.0e6, rope_type: yarn}"}},
        "rope_parameters.rope_type",
        kAppended,
        "'yarn' is not supported"},
    BadCase{"rope_theta_disagrees_with_rope_parameters",
            {{"rope_parameters", "{rope_theta: 5.0e5}"}},
            "rope_theta",
            15,
            "disagrees"},
    BadCase{"other_model_type",
            {{"model_type", "mixtral"}},
            "model_type",
            kAppended,
            "'mixtral' is not supported"},
    BadCase{"head_dim_absent_and_not_derivable",
            {{"head_dim", std::nullopt}, {"hidden_size", "66"}},
            "head_dim",
            1,
            "not divisible"},
};

INSTANTIATE_TEST_SUITE_P(AllCases, BadModelYaml, ::testing::ValuesIn(kBadCases),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return info.param.name;
                         });

TEST(ModelConfigValidate, ProgrammaticConfigWithoutSourceStillNamesTheKey) {
  ModelConfig c;
  c.vocab_size = 10;
  c.hidden_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.moe_intermediate_size = 4;
  c.num_experts = 4;
  c.num_experts_per_tok = 5;
  std::string msg = config_error([&] { c.validate(); });
  EXPECT_NE(msg.find("key 'num_experts_per_tok': 5 > num_experts 4"), std::string::npos) << msg;
  c.num_experts_per_tok = 2;
  EXPECT_NO_THROW(c.validate());
}

TEST(ModelConfigFormat, ListsEveryResolvedValue) {
  ModelConfig c = load_model_yaml(model_path("qwen3-30b-a3b.yaml"));
  std::string s = format_config(c);
  for (const char* part : {"hidden_size 2048", "num_experts 128", "num_experts_per_tok 8",
                           "head_dim 128", "rope_theta 1000000", "vocab_size 151936"}) {
    EXPECT_NE(s.find(part), std::string::npos) << part << " missing in:\n" << s;
  }
}

}  // namespace
}  // namespace moe::runtime
