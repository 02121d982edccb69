// moe-ep on one process: plan totals, forward determinism, generate/forward consistency, help.
#include <cmath>

#include "cli_util.h"
#include "kernels/cpu/host.h"

namespace moe::test {
namespace {

const std::string kTokens = "\"1,2,3,4,5,6,7;8,9,10;11,12,13,14,15\"";

TEST(CliPlan, Qwen3YamlPrintsExactTotalAndActiveParameters) {
  auto r = run(moe_ep() + " plan --model " + source("configs/models/qwen3-30b-a3b.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("30,532,122,624"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3,353,032,704"), std::string::npos) << r.out;
}

TEST(CliPlan, HfConfigDirectoryGivesTheSameTotalsAndJson) {
  auto dir = temp_dir("plan");
  auto json = (dir / "plan.json").string();
  auto r =
      run(moe_ep() + " plan --model " + source("tests/fixtures/qwen3-30b-a3b") + " --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("30,532,122,624"), std::string::npos);
  EXPECT_NE(r.out.find("3,353,032,704"), std::string::npos);
  std::string j = read_text(json);
  EXPECT_NE(j.find("30532122624"), std::string::npos);
  EXPECT_NE(j.find("3353032704"), std::string::npos);
}

TEST(CliForward, TinyLogitsAreBitIdenticalAcrossRuns) {
  auto dir = temp_dir("fwd");
  auto a = (dir / "a.npy").string(), b = (dir / "b.npy").string();
  auto r1 = run(tiny_command(moe_ep(), "forward", kTokens) + " --logits-out " + a);
  auto r2 = run(tiny_command(moe_ep(), "forward", kTokens) + " --logits-out " + b);
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(read_text(a), read_text(b));
  auto la = runtime::read_npy_f32(a);
  ASSERT_EQ(la.shape.size(), 3u);
  EXPECT_EQ(la.shape[0], 3);
  EXPECT_EQ(la.shape[1], 7);
  // Sequence 1 has 3 tokens: rows 3..6 are NaN padding, rows 0..2 finite.
  const int64_t V = la.shape[2];
  EXPECT_TRUE(std::isnan(la.data[(1 * 7 + 3) * V]));
  EXPECT_FALSE(std::isnan(la.data[(1 * 7 + 2) * V]));
  // Logits have a sane spread (synthetic weights are scaled for it).
  float lo = 1e30f, hi = -1e30f;
  for (int64_t i = 0; i < 7 * V; ++i) {
    ASSERT_TRUE(std::isfinite(la.data[i]));
    lo = std::min(lo, la.data[i]);
    hi = std::max(hi, la.data[i]);
  }
  EXPECT_GT(hi - lo, 1.0f);
  EXPECT_LT(hi - lo, 1000.0f);
}

TEST(CliGenerate, FirstGreedyTokenIsArgmaxOfForwardLastRow) {
  auto dir = temp_dir("gen");
  auto npy = (dir / "l.npy").string();
  auto f = run(tiny_command(moe_ep(), "forward", kTokens) + " --logits-out " + npy);
  ASSERT_EQ(f.exit_code, 0) << f.err;
  auto g = run(tiny_command(moe_ep(), "generate", kTokens) + " --max-new-tokens 4");
  ASSERT_EQ(g.exit_code, 0) << g.err;
  auto logits = runtime::read_npy_f32(npy);
  const int64_t L = logits.shape[1], V = logits.shape[2];
  const int lens[] = {7, 3, 5};
  std::stringstream lines(g.out);
  for (int s = 0; s < 3; ++s) {
    std::string line;
    ASSERT_TRUE(std::getline(lines, line)) << g.out;
    const float* last = logits.data.data() + (s * L + lens[s] - 1) * V;
    const int64_t expect = kernels::argmax(last, V);
    EXPECT_EQ(std::stoll(line.substr(0, line.find(','))), expect) << "sequence " << s;
    EXPECT_EQ(std::count(line.begin(), line.end(), ',') + 1, 4) << line;
  }
}

TEST(CliGenerate, DecodeWithCacheMatchesForwardOverTheExtendedPrompt) {
  // Greedy tokens from the KV-cache path equal the argmax of a full re-run of prompt + tokens.
  auto g = run(tiny_command(moe_ep(), "generate", "5,6,7,8") + " --max-new-tokens 3");
  ASSERT_EQ(g.exit_code, 0) << g.err;
  std::string toks = g.out.substr(0, g.out.find('\n'));
  auto dir = temp_dir("gen2");
  auto npy = (dir / "l.npy").string();
  auto f = run(tiny_command(moe_ep(), "forward", "5,6,7,8," + toks) + " --logits-out " + npy);
  ASSERT_EQ(f.exit_code, 0) << f.err;
  auto logits = runtime::read_npy_f32(npy);
  const int64_t V = logits.shape[2];
  std::vector<int64_t> gen;
  std::stringstream ss(toks);
  std::string item;
  while (std::getline(ss, item, ',')) gen.push_back(std::stoll(item));
  ASSERT_EQ(gen.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(kernels::argmax(logits.data.data() + (3 + i) * V, V), gen[i]) << "step " << i;
  }
}

TEST(CliHelp, EveryCommandHasHelp) {
  for (std::string cmd : {"", "plan", "forward", "generate", "run"}) {
    auto r = run(moe_ep() + " " + cmd + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd << r.err;
    EXPECT_NE(r.out.find("--"), std::string::npos) << cmd;
  }
}

TEST(CliUsage, MissingRequiredOptionExitsTwo) {
  auto r = run(moe_ep() + " forward --model " + kTiny);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE((r.out + r.err).find("--tokens"), std::string::npos);
}

TEST(CliRun, TinyWorkloadReportsThroughputAndWritesJson) {
  auto dir = temp_dir("run");
  auto json = (dir / "run.json").string();
  auto r = run(moe_ep() + " run --quiet --config " + source("configs/bench/tiny.yaml") +
               " --set workload.decode_steps=3 --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("tokens/s"), std::string::npos);
  std::string j = read_text(json);
  EXPECT_NE(j.find("prefill_tokens_per_s"), std::string::npos);
  EXPECT_NE(j.find("\"decode_steps\": 3"), std::string::npos);
}

}  // namespace
}  // namespace moe::test
