// Routing on the device (parallel/resident_dispatcher.h: top-k, layout, grouping and combine by
// backend ops, metadata in backend memory) run on the CPU backend, where the ops are the CPU
// emulation of the CUDA kernels' per-thread bodies: the logits and the per-layer loads must be
// BIT-identical to the host routing (the reference) at 1, 2, 3 and 4 ranks, with replicated
// experts, a rank with no sequences, and a rank that holds no experts.
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "runtime/io/config.h"
#include "runtime/io/trace.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::test {
namespace {

const std::string kTiny = source("configs/models/tiny.yaml");
const std::string kTokens = "\"1,2,3,4,5,6,7,8,9;10,11;12,13,14,15,16,17;18;19,20,21,22\"";

void expect_same_logits(const std::string& base, const std::string& what) {
  const auto host = runtime::read_npy_f32(base + "_host.npy");
  const auto dev = runtime::read_npy_f32(base + "_device.npy");
  ASSERT_EQ(host.shape, dev.shape) << what;
  ASSERT_FALSE(host.data.empty()) << what;
  size_t differ = 0;
  // Bit patterns: the padding of shorter sequences is NaN in both.
  for (size_t i = 0; i < host.data.size(); ++i) {
    differ += std::memcmp(&host.data[i], &dev.data[i], sizeof(float)) != 0 ? 1 : 0;
  }
  EXPECT_EQ(differ, 0u) << what << ": logits differ between --routing host and device";
}

TEST(DeviceRouting, CpuEmulationGivesTheHostRoutingLogitsBitForBit) {
  auto dir = temp_dir("device_routing");
  // A skewed trace to fit placements with replicas (3 ranks) and one leaving rank 3 empty.
  runtime::RoutingSpec spec;
  spec.kind = "zipf";
  spec.s = 1.5;
  const std::string trace = (dir / "zipf.safetensors").string();
  runtime::write_trace(trace,
                       runtime::generate_trace(spec, runtime::load_model_config(kTiny), 512));
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
      {1, "", kTokens},
      {2, "", kTokens},
      {2, "", "\"5,6,7,8\""},  // rank 1 has no sequence
      {3, "--placement " + replicated, kTokens},
      {4, "--placement " + empty_rank, kTokens},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string base = (dir / ("c" + std::to_string(i))).string();
    for (const char* routing : {"host", "device"}) {
      auto r = run(mpirun(c.ranks) + " forward --quiet --model " + kTiny + " --tokens " + c.tokens +
                   " " + c.args + " --routing " + routing + " --logits-out " + base + "_" +
                   routing + ".npy");
      ASSERT_EQ(r.exit_code, 0) << c.ranks << " ranks " << c.args << " " << routing << r.err;
    }
    expect_same_logits(base, std::to_string(c.ranks) + " ranks " + c.args);
  }
}

// The loads and traffic a run reports come from the device counters: the same numbers.
TEST(DeviceRouting, RunReportsTheSameLoadsAndTraffic) {
  auto dir = temp_dir("device_routing_run");
  nlohmann::json j[2];
  int i = 0;
  for (const char* routing : {"host", "device"}) {
    const std::string json = (dir / (std::string(routing) + ".json")).string();
    auto r = run(mpirun(3) + " run --quiet --config " + source("configs/bench/tiny.yaml") +
                 " --routing " + routing + " --json " + json);
    ASSERT_EQ(r.exit_code, 0) << routing << r.err;
    j[i++] = nlohmann::json::parse(read_text(json));
  }
  ASSERT_TRUE(j[0].contains("metrics")) << j[0].dump();
  for (const char* key : {"layers", "load", "traffic"}) {
    ASSERT_TRUE(j[0]["metrics"].contains(key)) << key;
    EXPECT_EQ(j[0]["metrics"][key], j[1]["metrics"][key]) << key;
  }
  EXPECT_EQ(j[0]["tokens"], j[1]["tokens"]);
}

// The graph-safe step (--graph on: every op's metadata uploaded once per step; on the CPU it runs
// eagerly, on CUDA it is what gets captured) gives the same tokens and the same loads.
TEST(DeviceRouting, GraphSafeStepGivesTheSameTokensAndLoads) {
  auto dir = temp_dir("device_routing_graph");
  std::string tokens[2];
  int i = 0;
  for (const char* flags : {"--routing host", "--routing device --graph on"}) {
    auto g = run(moe_ep() + " generate --quiet --model " + kTiny + " --tokens " + kTokens + " " +
                 flags + " --max-new-tokens 5");
    ASSERT_EQ(g.exit_code, 0) << flags << g.err;
    tokens[i++] = g.out;
  }
  EXPECT_FALSE(tokens[0].empty());
  EXPECT_EQ(tokens[0], tokens[1]);
  nlohmann::json j[2];
  i = 0;
  for (const char* flags : {"--routing host", "--routing device --graph on"}) {
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
