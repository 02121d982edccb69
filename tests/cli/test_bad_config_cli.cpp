// Bad inputs through the real executable: each exits 1 with ONE line on stderr that names the
// file, the key and (for YAML) the line, never a crash or a partial run.
#include "cli_util.h"

namespace moe::test {
namespace {

const char* kGoodTiny = R"(name: tiny-test
vocab_size: 64
hidden_size: 32
num_hidden_layers: 2
num_attention_heads: 4
num_key_value_heads: 2
head_dim: 8
intermediate_size: 64
moe_intermediate_size: 16
num_experts: 8
num_experts_per_tok: 2
norm_topk_prob: true
rms_norm_eps: 1.0e-6
rope_theta: 10000.0
max_position_embeddings: 128
)";

std::string replace_line(std::string text, const std::string& key, const std::string& new_line) {
  auto pos = text.find(key + ":");
  EXPECT_NE(pos, std::string::npos) << key;
  auto end = text.find('\n', pos);
  return text.replace(pos, end - pos, new_line);
}

struct BadCase {
  std::string name;
  std::string yaml;               // file content ("" = file missing)
  std::vector<std::string> must;  // substrings the error line must contain
};

std::vector<BadCase> bad_cases() {
  std::string g = kGoodTiny;
  return {
      {"missing_file", "", {"missing_file.yaml", "not found"}},
      {"not_yaml", "hidden_size: [1, 2\nvocab: {", {"not_yaml.yaml", "not valid YAML"}},
      {"missing_key",
       replace_line(g, "hidden_size", ""),
       {"missing_key.yaml", "hidden_size", "missing"}},
      {"wrong_type",
       replace_line(g, "hidden_size", "hidden_size: wide"),
       {"wrong_type.yaml:3", "hidden_size", "integer"}},
      {"list_for_scalar",
       replace_line(g, "num_experts", "num_experts: [8]"),
       {"list_for_scalar.yaml:10", "num_experts"}},
      {"topk_gt_experts",
       replace_line(g, "num_experts_per_tok", "num_experts_per_tok: 9"),
       {"topk_gt_experts.yaml", "num_experts_per_tok", "11"}},
      {"heads_not_divisible",
       replace_line(g, "num_key_value_heads", "num_key_value_heads: 3"),
       {"heads_not_divisible.yaml", "num_key_value_heads", "6"}},
      {"negative_size",
       replace_line(g, "hidden_size", "hidden_size: -32"),
       {"negative_size.yaml", "hidden_size"}},
      {"unknown_key", g + "num_expert: 4\n", {"unknown_key.yaml:16", "num_expert"}},
  };
}

TEST(CliBadConfig, EachBadModelYamlExitsOneWithOneLineNamingFileKeyAndLine) {
  auto dir = temp_dir("badcfg");
  for (const auto& c : bad_cases()) {
    auto path = dir / (c.name + ".yaml");
    if (!c.yaml.empty()) std::ofstream(path) << c.yaml;
    auto npy = (dir / "x.npy").string();
    auto r =
        run(moe_ep() + " forward --model " + path.string() + " --tokens 1,2 --logits-out " + npy);
    EXPECT_EQ(r.exit_code, 1) << c.name << ": " << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << c.name << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << c.name << ": " << r.out;
    for (const auto& m : c.must)
      EXPECT_NE(r.err.find(m), std::string::npos) << c.name << " lacks '" << m << "': " << r.err;
    EXPECT_FALSE(std::filesystem::exists(npy)) << c.name << " wrote output";
  }
}

TEST(CliBadConfig, PlanOnBadYamlExitsOne) {
  auto dir = temp_dir("badplan");
  auto path = dir / "topk.yaml";
  std::ofstream(path) << replace_line(kGoodTiny, "num_experts_per_tok", "num_experts_per_tok: 9");
  auto r = run(moe_ep() + " plan --model " + path.string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("num_experts_per_tok"), std::string::npos);
}

TEST(CliBadConfig, BadRunYamlKeysAreNamed) {
  auto dir = temp_dir("badrun");
  auto model = dir / "m.yaml";
  std::ofstream(model) << kGoodTiny;
  auto run_yaml = dir / "run.yaml";
  std::ofstream(run_yaml) << "model: m.yaml\nworkload:\n  prompt_len: many\n";
  auto r = run(moe_ep() + " run --config " + run_yaml.string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("run.yaml:3"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("workload.prompt_len"), std::string::npos) << r.err;
}

TEST(CliBadInput, TokenOutsideVocabularyIsNamed) {
  auto dir = temp_dir("badtok");
  auto model = dir / "m.yaml";
  std::ofstream(model) << kGoodTiny;
  auto r = run(moe_ep() + " generate --model " + model.string() + " --tokens 1,64");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("token 64"), std::string::npos) << r.err;
}

TEST(CliBadInput, PromptLongerThanMaxPositionsIsRejected) {
  auto dir = temp_dir("badlen");
  auto model = dir / "m.yaml";
  std::ofstream(model) << replace_line(kGoodTiny, "max_position_embeddings",
                                       "max_position_embeddings: 4");
  auto r =
      run(moe_ep() + " generate --model " + model.string() + " --tokens 1,2,3 --max-new-tokens 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("max_position_embeddings"), std::string::npos) << r.err;
}

// Rows narrower than the compute dtype would change an fp32 run's logits: refused, naming both
// flags.
TEST(CliBadInput, NarrowDispatchRowsInFp32ComputeAreRefused) {
  for (const char* dtype : {"bf16", "fp8"}) {
    auto r = run(moe_ep() + " forward --model " + kTiny + " --tokens 1,2 --dispatch-dtype " +
                 dtype + " --logits-out " + (temp_dir("badwire") / "x.npy").string());
    EXPECT_EQ(r.exit_code, 1) << dtype;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(std::string("--dispatch-dtype ") + dtype + " needs --compute-dtype bf16"),
              std::string::npos)
        << r.err;
  }
}

}  // namespace
}  // namespace moe::test
