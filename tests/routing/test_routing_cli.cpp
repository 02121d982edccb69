// Traces, synthetic routing and rebalancing through the moe-ep executable and an in-process
// worker, under mpirun: record -> replay is bit for bit on any rank count and decodes the same
// tokens; synthetic routing is identical on 1 and 3 ranks; every bad trace ends the job with one
// line naming the file and the problem (exit 1); a rebalance keeps the one-rank logits and tokens.
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "runtime/io/trace.h"
#include "tests/checkpoint/safetensors_writer.h"

namespace moe::test {
namespace {

const std::string kTiny = source("configs/models/tiny.yaml");

class RoutingCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = temp_dir("routing_cli"); }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  // A run config: 3 sequences x 5 prompt tokens, 3 steps (15 + 2 * 3 = 21 trace rows).
  static std::string run_yaml(const std::string& name, const std::string& extra) {
    const std::string p = path(name);
    std::ofstream(p) << "model: " << kTiny
                     << "\ncompare_sgemm: false\nworkload:\n  num_sequences: 3\n  prompt_len: 5\n"
                        "  decode_steps: 3\n"
                     << extra;
    return p;
  }
  static std::string replay_yaml(const std::string& name, const std::string& trace) {
    return run_yaml(name, "  routing: {kind: replay, trace: " + trace + "}\n");
  }
  static CommandResult run_moe(int ranks, const std::string& args) {
    return run((ranks == 1 ? moe_ep() : mpirun(ranks)) + " " + args);
  }
  static nlohmann::json json_of(const std::string& file) {
    return nlohmann::json::parse(read_text(file));
  }
  static inline std::filesystem::path dir_;
};

TEST_F(RoutingCli, RecordThenReplayIsBitForBitOnAnyRankCount) {
  const std::string router = run_yaml("router.yaml", "");
  auto r = run_moe(1, "run --quiet --config " + router + " --trace-out " + path("rec.st") +
                          " --json " + path("rec.json"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const runtime::RoutingTrace rec = runtime::read_trace(path("rec.st"));
  EXPECT_EQ(rec.num_tokens(0), 21);
  EXPECT_EQ(rec.layers, (std::vector<int64_t>{0, 1, 2}));
  const auto tokens = json_of(path("rec.json"))["tokens"];
  ASSERT_EQ(tokens.size(), 3u);

  const std::string replay = replay_yaml("replay.yaml", path("rec.st"));
  for (int n : {1, 2}) {
    const std::string out = path("replayed_" + std::to_string(n));
    r = run_moe(n, "run --quiet --config " + replay + " --trace-out " + out + ".st --json " + out +
                       ".json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    // The replayed run's own routing, recorded again, is the trace byte for byte...
    EXPECT_EQ(read_text(out + ".st"), read_text(path("rec.st"))) << n << " ranks";
    // ...and with the router's own ids and weights the model decodes the router's tokens.
    EXPECT_EQ(json_of(out + ".json")["tokens"], tokens) << n << " ranks";
    EXPECT_EQ(json_of(out + ".json")["workload"]["routing"], "replay(" + path("rec.st") + ")");
  }
}

TEST_F(RoutingCli, ForwardRecordsEveryTokenInTheDocumentedOrder) {
  const std::string tokens = "--tokens \"1,2,3;4,5;6,7,8,9\"";
  auto one = run_moe(1, "forward --quiet --model " + kTiny + " " + tokens + " --logits-out " +
                            path("f1.npy") + " --trace-out " + path("f1.st"));
  ASSERT_EQ(one.exit_code, 0) << one.err;
  auto three = run_moe(3, "forward --quiet --model " + kTiny + " " + tokens + " --logits-out " +
                              path("f3.npy") + " --trace-out " + path("f3.st"));
  ASSERT_EQ(three.exit_code, 0) << three.err;
  const auto a = runtime::read_trace(path("f1.st")), b = runtime::read_trace(path("f3.st"));
  ASSERT_EQ(a.num_tokens(0), 9);
  // Sequence 1 ran on rank 1 of 3, yet its rows sit after sequence 0's: same ids either way
  // (weights may differ in the last bit: the router's GEMM sees other batch shapes).
  EXPECT_EQ(a.ids, b.ids);
  for (size_t l = 0; l < a.weights.size(); ++l) {
    for (size_t i = 0; i < a.weights[l].size(); ++i)
      ASSERT_NEAR(a.weights[l][i], b.weights[l][i], 1e-5);
  }
}

TEST_F(RoutingCli, SyntheticRoutingIsTheSameOnOneAndThreeRanks) {
  for (const std::string spec :
       {"{kind: zipf, s: 1.2, seed: 3}", "{kind: topics, topics: 8, experts_per_topic: 16}",
        "{kind: drift, s: 1.5, period: 1, shift: 4}", "{kind: hotset, hot_experts: 8}"}) {
    const std::string yaml = run_yaml("synthetic.yaml", "  routing: " + spec + "\n");
    std::string traces[2];
    int i = 0;
    for (int n : {1, 3}) {
      traces[i] = path("syn_" + std::to_string(n) + ".st");
      auto r = run_moe(n, "run --quiet --config " + yaml + " --trace-out " + traces[i++]);
      ASSERT_EQ(r.exit_code, 0) << spec << r.err;
    }
    EXPECT_EQ(read_text(traces[0]), read_text(traces[1])) << spec;
    EXPECT_EQ(runtime::read_trace(traces[0]).num_tokens(0), 21) << spec;
  }
}

// A trace file written by hand: ids [tokens, top_k] for `layers`, metadata as given.
std::string write_trace_file(const std::string& file, int64_t tokens, int64_t top_k,
                             const std::vector<int>& layers, nlohmann::json metadata,
                             const std::string& dtype = "I32", int32_t bad_id = -1) {
  std::vector<moe::testing::TensorBytes> tensors;
  for (int l : layers) {
    std::vector<int32_t> ids;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < top_k; ++j) ids.push_back(static_cast<int32_t>((t + j * 5) % 64));
    }
    if (bad_id >= 0 && !ids.empty()) ids[top_k + 1] = bad_id;  // token 1, second pick
    std::vector<uint8_t> bytes = moe::testing::to_bytes(ids);
    if (dtype == "F32") {
      std::vector<float> f(ids.begin(), ids.end());
      bytes = moe::testing::to_bytes(f);
    }
    tensors.push_back({"layers." + std::to_string(l) + ".topk_ids", dtype, {tokens, top_k}, bytes});
  }
  moe::testing::write_safetensors(file, tensors, metadata);
  return file;
}

TEST_F(RoutingCli, EachBadTraceEndsTheJobWithOneClearLine) {
  const nlohmann::json meta = {{"num_experts", "128"}, {"top_k", "8"}, {"num_layers", "3"}};
  nlohmann::json no_top_k = meta;
  no_top_k.erase("top_k");
  nlohmann::json top4 = meta;
  top4["top_k"] = "4";
  nlohmann::json experts64 = meta;
  experts64["num_experts"] = "64";
  struct Case {
    std::string name, file, expected;
  };
  const std::vector<Case> cases = {
      {"missing_key", write_trace_file(path("missing_key.st"), 21, 8, {0, 1, 2}, no_top_k),
       "metadata key 'top_k' is missing"},
      {"wrong_dtype", write_trace_file(path("wrong_dtype.st"), 21, 8, {0, 1, 2}, meta, "F32"),
       "tensor 'layers.0.topk_ids' is F32, expected I32"},
      {"top_k_mismatch", write_trace_file(path("top4.st"), 21, 4, {0, 1, 2}, top4),
       "trace has top_k 4, model 'tiny' routes to 8 experts per token"},
      {"expert_count_mismatch", write_trace_file(path("e64.st"), 21, 8, {0, 1, 2}, experts64),
       "trace has 64 experts, model 'tiny' has 128"},
      {"missing_layer", write_trace_file(path("two_layers.st"), 21, 8, {0, 1}, meta),
       "no routing for MoE layer 2 of model 'tiny'"},
      {"id_out_of_range", write_trace_file(path("range.st"), 21, 8, {0, 1, 2}, meta, "I32", 130),
       "layer 0 token 1: expert id 130 is outside 0..127"},
      {"empty", write_trace_file(path("empty.st"), 0, 8, {0, 1, 2}, meta), "empty trace: 0 tokens"},
      {"too_short", write_trace_file(path("short.st"), 20, 8, {0, 1, 2}, meta),
       "trace has 20 token rows, but the workload"},
      {"missing_file", path("nope.st"), "cannot open"},
  };
  for (const Case& c : cases) {
    const std::string yaml = replay_yaml("bad_" + c.name + ".yaml", c.file);
    auto r = run_moe(2, "run --quiet --config " + yaml);
    EXPECT_EQ(r.exit_code, 1) << c.name << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.file + ": "), std::string::npos) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << c.name << ": " << r.err;
  }
}

TEST_F(RoutingCli, BadRoutingSpecNamesFileKeyAndLine) {
  const std::string yaml = run_yaml("bad_spec.yaml", "  routing: {kind: zipf, mix: 0.2}\n");
  auto r = run_moe(1, "run --quiet --config " + yaml);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(yaml + ":7: key 'workload.routing.mix': unknown key"), std::string::npos)
      << r.err;
}

// Rebalancing moves weights and changes nothing the model computes: the same greedy tokens as
// one rank without it, on 2 and 4 ranks.
TEST_F(RoutingCli, RunAcrossRebalancesDecodesTheOneRankTokens) {
  const std::string base = run_yaml("rb_base.yaml", "  routing: {kind: zipf, s: 1.2, seed: 5}\n");
  auto ref = run_moe(1, "run --quiet --config " + base + " --json " + path("rb_ref.json"));
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  const auto tokens = json_of(path("rb_ref.json"))["tokens"];
  const std::string yaml = run_yaml("rb.yaml",
                                    "  routing: {kind: zipf, s: 1.2, seed: 5}\n"
                                    "rebalance: {every: 1, window: 1, strategy: replicated, "
                                    "redundant: 8}\n");
  for (int n : {2, 4}) {
    const std::string json = path("rb_" + std::to_string(n) + ".json");
    auto r = run_moe(n, "run --quiet --config " + yaml + " --json " + json);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("rebalance    every 1 steps"), std::string::npos) << r.out;
    const auto j = json_of(json);
    EXPECT_EQ(j["tokens"], tokens) << n << " ranks";
    const auto& rb = j["rebalance"];
    ASSERT_EQ(rb["events"].size(), 3u);  // after steps 0, 1 and 2
    EXPECT_GT(rb["bytes_moved"].get<int64_t>(), 0);
    const auto& first = rb["events"][0];
    EXPECT_EQ(first["slots_per_layer"].get<int64_t>(), 128 + 8);
    // The prefill's zipf loads fit almost perfectly with 8 replicas (replicas share evenly).
    EXPECT_GT(first["balancedness_fitted"].get<double>(), 0.95);
    EXPECT_LT(first["balancedness_before"].get<double>(),
              first["balancedness_fitted"].get<double>());
    EXPECT_TRUE(first["balancedness_after"].is_number());
    EXPECT_TRUE(rb["events"][2]["balancedness_after"].is_null());  // nothing ran after it
    // Bytes moved are whole experts: 3 projections of 32 x 64 bf16 each.
    EXPECT_EQ(first["bytes_moved"].get<int64_t>(),
              first["experts_moved"].get<int64_t>() * 3 * 32 * 64 * 2);
  }
}

// Logits: prefill, move every layer to a replicated placement and back, prefill after each move;
// every prefill gives the one-rank logits.
TEST_F(RoutingCli, ForwardLogitsAcrossRebalancesEqualOneRankLogits) {
  const std::string worker = MOE_REBALANCE_WORKER;
  const std::string ref_dir = path("worker_1");
  std::filesystem::create_directories(ref_dir);
  auto r = run(std::string(MOE_MPIRUN) + " --allow-run-as-root --oversubscribe --quiet -np 1 " +
               worker + " " + kTiny + " " + ref_dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto ref = runtime::read_npy_f32(ref_dir + "/before.npy");
  for (int n : {2, 4}) {
    const std::string dir = path("worker_" + std::to_string(n));
    std::filesystem::create_directories(dir);
    r = run(std::string(MOE_MPIRUN) + " --allow-run-as-root --oversubscribe --quiet -np " +
            std::to_string(n) + " -x OPENBLAS_NUM_THREADS=1 " + worker + " " + kTiny + " " + dir);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    for (const char* name : {"before", "replicated", "back"}) {
      const auto got = runtime::read_npy_f32(dir + "/" + name + ".npy");
      EXPECT_LE(relative_max_diff(got, ref), 1e-5) << n << " ranks, " << name;
    }
    const auto moved = json_of(dir + "/moved.json");
    ASSERT_EQ(moved.size(), 2u);
    for (const auto& m : moved) {
      EXPECT_GT(m["experts_received"].get<int64_t>(), 0) << n;
      EXPECT_GT(m["experts_kept"].get<int64_t>(), 0) << n;
    }
  }
}

}  // namespace
}  // namespace moe::test
