// The one MoE path at the edges of a job, on the CPU backend (whose layout ops run the CUDA
// kernels' per-thread bodies): a rank with no sequences, a rank that holds no experts and
// replicated experts give the one-rank logits; and the graph-safe step (--graph on: every op's
// metadata in backend memory, host copies withheld, as a captured device graph runs it) gives
// the eager step's tokens and loads bit for bit.
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "runtime/io/config.h"
#include "runtime/io/trace.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::test {
namespace {

TEST(EdgeRanks, NoSequencesNoExpertsAndReplicasGiveTheOneRankLogits) {
  auto dir = temp_dir("edge_ranks");
  // A skewed trace to fit placements with replicas (3 ranks) and one leaving rank 3 empty.
  const std::string trace = tiny_zipf_trace(dir, 1.5, 512);
  const std::string replicated = (dir / "replicated.yaml").string();
  auto p = run(moe_ep() + " place --trace " + trace +
               " --ranks 3 --strategy replicated --redundant 13 --out " + replicated);
  ASSERT_EQ(p.exit_code, 0) << p.err;
  const std::string empty_rank = (dir / "empty_rank.yaml").string();
  {
    // Ranks 0-2 hold the experts unevenly; rank 3 holds none.
    const int64_t E = runtime::load_model_config(kTiny).num_experts;
    std::vector<std::string> lists(3);
    for (int64_t e = 0; e < E; ++e) {
      std::string& l = lists[e % 5 == 0 ? 0 : (e % 2 == 0 ? 1 : 2)];
      l += (l.empty() ? "" : ", ") + std::to_string(e);
    }
    std::ofstream(empty_rank) << "strategy: explicit\nranks: 4\nlayers:\n  default: [[" << lists[0]
                              << "], [" << lists[1] << "], [" << lists[2] << "], []]\n";
  }
  struct Case {
    int ranks;
    std::string args, tokens;
  };
  const std::vector<Case> cases = {
      {2, "", kFiveSequences},
      {2, "", "\"5,6,7,8\""},  // rank 1 has no sequence
      {3, "--placement " + replicated, kFiveSequences},
      {4, "--placement " + empty_rank, kFiveSequences},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string base = (dir / ("c" + std::to_string(i))).string();
    for (int ranks : {1, c.ranks}) {
      auto r = run(mpirun(ranks) + " forward --quiet --model " + kTiny + " --tokens " + c.tokens +
                   " " + (ranks == 1 ? std::string() : c.args) + " --logits-out " + base + "_" +
                   std::to_string(ranks) + ".npy");
      ASSERT_EQ(r.exit_code, 0) << ranks << " ranks " << c.args << r.err;
    }
    const auto one = runtime::read_npy_f32(base + "_1.npy");
    const auto many = runtime::read_npy_f32(base + "_" + std::to_string(c.ranks) + ".npy");
    ASSERT_EQ(one.shape, many.shape) << c.ranks << " ranks " << c.args;
    EXPECT_LE(relative_max_diff(many, one), 1e-5) << c.ranks << " ranks " << c.args;
  }
}

// The graph-safe step (--graph on: every op's metadata uploaded once per step; on the CPU it runs
// eagerly, on CUDA it is what gets captured) gives the same tokens and the same loads.
TEST(EdgeRanks, GraphSafeStepGivesTheEagerTokensAndLoadsBitForBit) {
  auto dir = temp_dir("edge_ranks_graph");
  std::string tokens[2];
  int i = 0;
  for (const char* flags : {"--graph off", "--graph on"}) {
    auto g = run(moe_ep() + " generate --quiet --model " + kTiny + " --tokens " + kFiveSequences +
                 " " + flags + " --max-new-tokens 5");
    ASSERT_EQ(g.exit_code, 0) << flags << g.err;
    tokens[i++] = g.out;
  }
  EXPECT_FALSE(tokens[0].empty());
  EXPECT_EQ(tokens[0], tokens[1]);
  nlohmann::json j[2];
  i = 0;
  for (const char* flags : {"--graph off", "--graph on"}) {
    const std::string json = (dir / ("r" + std::to_string(i) + ".json")).string();
    auto r = run(moe_ep() + " run --quiet --config " + source("configs/bench/tiny.yaml") + " " +
                 flags + " --json " + json);
    ASSERT_EQ(r.exit_code, 0) << flags << r.err;
    j[i++] = nlohmann::json::parse(read_text(json));
  }
  for (const char* key : {"layers", "load", "traffic"}) {
    EXPECT_EQ(j[0]["metrics"][key], j[1]["metrics"][key]) << key;
  }
}

}  // namespace
}  // namespace moe::test
