// moe-ep against transformers' own float32 logits and greedy continuations, for every fixture
// (per-expert, dense-mix, tied, fused, transposed-fused layouts, and the FP8 fixtures against the
// float64 forward of their dequantised weights) on 1, 2 and 4 ranks; checkpoint faults that only
// one rank can see; an FP8 checkpoint held as stored.
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_util.h"
#include "hf_fixture.h"

namespace moe::test {
namespace {

std::string launcher(int n) {
  return n == 1 ? moe_ep() : mpirun(n);
}

class HfFixture : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(HfFixture, ForwardLogitsMatchTransformersAndGreedyTokensAreIdentical) {
  const auto& [name, ranks] = GetParam();
  Fixture f = load_fixture(name);
  auto dir = temp_dir("hf_" + name + "_" + std::to_string(ranks));
  auto npy = (dir / "logits.npy").string();
  auto r = run(launcher(ranks) + " forward --quiet --model " + f.dir + " --tokens \"" +
               f.tokens_arg + "\" --logits-out " + npy);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ours = runtime::read_npy_f32(npy);
  ASSERT_EQ(ours.shape.size(), 3u);
  const int64_t V = ours.shape[2];
  for (size_t i = 0; i < f.prompts.size(); ++i) {
    auto ref = runtime::read_npy_f32(f.dir + "/logits_" + std::to_string(i) + ".npy");
    const int64_t len = static_cast<int64_t>(f.prompts[i].size());
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{len, V})) << name << " prompt " << i;
    const runtime::NpyArray mine = sequence_rows(ours, i, len);
    const double rel = relative_max_diff(mine, ref);
    EXPECT_LE(rel, 1e-4) << name << " prompt " << i << " on " << ranks << " ranks";
  }
  const int max_new = static_cast<int>(f.greedy[0].size());
  auto g = run(launcher(ranks) + " generate --quiet --model " + f.dir + " --tokens \"" +
               f.tokens_arg + "\" --max-new-tokens " + std::to_string(max_new));
  ASSERT_EQ(g.exit_code, 0) << g.err;
  std::stringstream lines(g.out);
  for (size_t i = 0; i < f.greedy.size(); ++i) {
    std::string line;
    ASSERT_TRUE(std::getline(lines, line)) << g.out;
    std::string expect;
    for (size_t t = 0; t < f.greedy[i].size(); ++t)
      expect += (t ? "," : "") + std::to_string(f.greedy[i][t]);
    EXPECT_EQ(line, expect) << name << " sequence " << i << " on " << ranks << " ranks";
  }
}

INSTANTIATE_TEST_SUITE_P(AllFixtures, HfFixture,
                         ::testing::Combine(::testing::ValuesIn(kFixtures),
                                            ::testing::Values(1, 2, 4)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "ranks";
                         });

// A copy of fixture `name` in temp dir `tag` whose index no longer lists `tensor`.
std::filesystem::path copy_without(const std::string& name, const std::string& tensor,
                                   const std::string& tag) {
  auto dir = temp_dir(tag);
  for (const auto& e : std::filesystem::directory_iterator(source("tests/fixtures/hf/" + name))) {
    std::filesystem::copy_file(e.path(), dir / e.path().filename(),
                               std::filesystem::copy_options::overwrite_existing);
  }
  auto index = nlohmann::json::parse(read_text(dir / "model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"].erase(tensor), 1u) << name << " lists no " << tensor;
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();
  return dir;
}

// A checkpoint whose index lacks one expert's tensor: only the rank that holds that expert
// reads it, finds it missing, and must end the whole 2-rank job with a message naming it.
TEST(HfCheckpointFault, MissingExpertTensorSeenByOneRankEndsTheJobNamingRankAndTensor) {
  const std::string victim = "model.layers.1.mlp.experts.100.up_proj.weight";  // rank 1 of 2
  auto dir = copy_without("moe128", victim, "hf_missing");
  auto r = run(mpirun(2) + " forward --model " + dir.string() + " --tokens 1,2,3 --logits-out " +
                   (dir / "x.npy").string(),
               60);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_LT(r.seconds, 30.0);
  EXPECT_NE(r.err.find(victim), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rank 1"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moe::test

namespace moe::test {
namespace {

// With 8 ranks every rank reads exactly its dense replica plus its own experts (all tensors are
// BF16, so bytes read == bytes held): no rank touches another rank's experts.
TEST(HfCheckpointLoad, EachOfEightRanksReadsOnlyItsOwnExperts) {
  const std::string dir = source("tests/fixtures/hf/moe128");
  auto out = temp_dir("hf_reads");
  auto json = (out / "load.json").string();
  auto r = run(mpirun(8) + " forward --quiet --model " + dir + " --tokens 1,2,3 --json " + json +
               " --logits-out " + (out / "x.npy").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(read_text(json));
  ASSERT_EQ(j["load_per_rank"].size(), 8u);
  int64_t experts = 0;
  for (const auto& rank : j["load_per_rank"]) {
    const int64_t held =
        rank["dense_replica_bytes"].get<int64_t>() + rank["expert_shard_bytes"].get<int64_t>();
    EXPECT_EQ(rank["bytes_read"].get<int64_t>(), held) << "rank " << rank["rank"];
    EXPECT_EQ(rank["local_experts"].get<int64_t>(), 2 * 16)
        << "rank " << rank["rank"];  // 2 layers x 128/8
    experts += rank["local_experts"].get<int64_t>();
  }
  EXPECT_EQ(experts, 2 * 128);
}

// An FP8 checkpoint is held as stored (e4m3 codes + fp32 block scales: bytes read == bytes held,
// half of bf16 plus the scales) and `run` takes it on 2 ranks.
TEST(HfCheckpointLoad, Fp8CheckpointIsHeldAsStoredAndRunTakesIt) {
  const std::string dir = source("tests/fixtures/hf/moe128_fp8");
  auto out = temp_dir("hf_fp8_run");
  auto json = (out / "run.json").string();
  auto r =
      run(mpirun(2) + " run --quiet --config " + source("configs/bench/tiny.yaml") + " --model " +
          dir + " --set workload.prompt_len=8 --set workload.decode_steps=4 --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(read_text(json));
  EXPECT_EQ(j["model"], "moe128_fp8");
  ASSERT_EQ(j["load_per_rank"].size(), 2u);
  for (const auto& rank : j["load_per_rank"]) {
    const int64_t held =
        rank["dense_replica_bytes"].get<int64_t>() + rank["expert_shard_bytes"].get<int64_t>();
    EXPECT_EQ(rank["bytes_read"].get<int64_t>(), held) << "rank " << rank["rank"];
    // 2 layers x 64 experts x (gate, up, down: 24 x 64 codes + one fp32 scale each).
    EXPECT_EQ(rank["expert_shard_bytes"].get<int64_t>(), 2 * 64 * 3 * (24 * 64 + 4));
  }
}

// An FP8 checkpoint whose index lacks one scale tensor ends the 2-rank job with one line naming
// the shard file, the scale looked for and the weight.
TEST(HfCheckpointFault, Fp8WeightWithoutItsScaleEndsTheJobNamingFileAndTensor) {
  const std::string scale = "model.layers.1.mlp.experts.down_proj_scale_inv";
  auto dir = copy_without("fused_t_fp8", scale, "hf_fp8_no_scale");
  auto r = run(mpirun(2) + " forward --model " + dir.string() + " --tokens 1,2,3 --logits-out " +
                   (dir / "x.npy").string(),
               60);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("F8_E4M3 tensor without its block scales: no tensor '" + scale + "'"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("tensor 'model.layers.1.mlp.experts.down_proj'"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find(".safetensors"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moe::test
