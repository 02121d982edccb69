// `moe-ep predict` and `moe-ep calibrate` through the real executable: a good prediction writes
// the JSON keys the validation reads; every bad hardware profile and bad argument ends with ONE
// line on stderr naming the cause (config errors exit 1, usage errors exit 2), never a partial
// result. No timings.
#include <nlohmann/json.hpp>

#include "cli_util.h"

namespace moe::test {
namespace {

const char* kGoodProfile = R"(name: test-gpu
kind: gpu
compute:
  prefill_gemm_gflops: 1000
  decode_gemm_gflops: 100
  grouped_gemm_gflops: 500
  attention_gflops: 100
memory:
  bandwidth_gbps: 100
overhead:
  launch_us: 1
comm:
  ranks_per_node: 8
  intra_node: {latency_us: 1, bandwidth_gbps: 10}
)";

std::string replace(std::string text, const std::string& from, const std::string& to) {
  const auto pos = text.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  return text.replace(pos, from.size(), to);
}

std::string predict_cmd(const std::string& hw, const std::string& extra = "") {
  return moe_ep() + " predict --config " + source("configs/bench/tiny.yaml") + " --ranks 2" +
         (hw.empty() ? "" : " --hardware " + hw) + " " + extra;
}

TEST(CostCli, PredictWritesPrefillAndDecodeStepPerPhase) {
  auto dir = temp_dir("predict_ok");
  auto hw = dir / "hw.yaml";
  std::ofstream(hw) << kGoodProfile;
  auto json = dir / "p.json";
  auto r = run(predict_cmd(hw.string(), "--json " + json.string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(read_text(json));
  EXPECT_GT(j.at("prefill_s").get<double>(), 0);
  EXPECT_GT(j.at("decode_step_s").get<double>(), 0);
  EXPECT_EQ(j.at("ranks").get<int>(), 2);
  for (const char* phase :
       {"attention", "router", "layout", "dispatch", "expert", "combine", "lm_head"}) {
    EXPECT_TRUE(j.at("prefill").at("phases").contains(phase)) << phase;
    EXPECT_TRUE(j.at("decode_step").at("phases").contains(phase)) << phase;
  }
  // The shipped profiles all load.
  for (const char* f : {"h100-8gpu", "h200-8gpu", "pcie4-24gb", "pcie4-48gb", "pcie5-32gb"}) {
    auto ok = run(predict_cmd(source(std::string("configs/hardware/") + f + ".yaml")));
    EXPECT_EQ(ok.exit_code, 0) << f << ": " << ok.err;
  }
}

// Nodes from a hostfile price the peers on the other node with the slower inter-node link.
TEST(CostCli, PredictPricesTheNodesOfAHostfile) {
  auto dir = temp_dir("predict_nodes");
  auto hw = dir / "hw.yaml";
  std::ofstream(hw) << kGoodProfile << "  inter_node: {latency_us: 5, bandwidth_gbps: 0.5}\n";
  auto hosts = dir / "hosts";
  std::ofstream(hosts) << "n0 slots=2\nn1 slots=2\n";
  auto one = dir / "one.json", two = dir / "two.json";
  const std::string base = moe_ep() + " predict --config " + source("configs/bench/tiny.yaml") +
                           " --ranks 4 --hardware " + hw.string();
  auto a = run(base + " --ranks-per-node 4 --json " + one.string());
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto b = run(base + " --hostfile " + hosts.string() + " --json " + two.string());
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const auto j1 = nlohmann::json::parse(read_text(one)), j2 = nlohmann::json::parse(read_text(two));
  EXPECT_EQ(j1.at("ranks_per_node").get<int>(), 4);
  EXPECT_EQ(j2.at("ranks_per_node").get<int>(), 2);
  const auto dispatch = [](const nlohmann::json& j) {
    return j.at("decode_step").at("phases").at("dispatch").get<double>();
  };
  EXPECT_GT(dispatch(j2), dispatch(j1)) << "two nodes cross the slower link";
  // The exchange as a run picks it: node-first across nodes, flat on one; flat on request.
  EXPECT_EQ(j1.at("exchange").get<std::string>(), "flat");
  EXPECT_EQ(j2.at("exchange").get<std::string>(), "hierarchical");
  auto flat = dir / "flat.json";
  auto c = run(base + " --hostfile " + hosts.string() + " --exchange flat --json " + flat.string());
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const auto j3 = nlohmann::json::parse(read_text(flat));
  EXPECT_EQ(j3.at("exchange").get<std::string>(), "flat");
  const auto inter = [](const nlohmann::json& j) {
    return j.at("prefill").at("inter_node_rows_per_token").get<double>();
  };
  EXPECT_EQ(inter(j1), 0.0);
  EXPECT_GT(inter(j3), inter(j2)) << "node-first crosses once per destination node";
  EXPECT_GT(inter(j2), 0.9) << "nearly every token of tiny (top-8) reaches the other node";
}

TEST(CostCli, PlanPlotDrawsThePicture) {
  auto dir = temp_dir("planplot");
  auto png = dir / "plan.png";
  auto r = run("sh -c 'cd " + source("") + " && " + moe_ep() +
               " plan --model configs/models/tiny.yaml --plot " + png.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GT(std::filesystem::file_size(png), 1000u);
  const auto j = nlohmann::json::parse(read_text(png.string() + ".json"));
  EXPECT_EQ(j.at("ranks").size(), 8u);  // N = 1 ... 128
  EXPECT_EQ(j.at("active").at(0).at("top_k").get<int>(), 1);
}

struct BadProfile {
  std::string name, yaml;
  std::vector<std::string> must;
};

TEST(CostCli, EachBadHardwareProfileExitsOneWithOneLine) {
  const std::string g = kGoodProfile;
  const std::vector<BadProfile> cases = {
      {"missing_file", "", {"missing_file.yaml"}},
      {"not_yaml", "compute: [1, 2\n", {"not_yaml.yaml"}},
      {"missing_rate",
       replace(g, "  grouped_gemm_gflops: 500\n", ""),
       {"missing_rate.yaml", "grouped_gemm_gflops"}},
      {"negative_rate",
       replace(g, "prefill_gemm_gflops: 1000", "prefill_gemm_gflops: -5"),
       {"negative_rate.yaml:4", "compute.prefill_gemm_gflops", "positive"}},
      {"word_for_number",
       replace(g, "bandwidth_gbps: 100", "bandwidth_gbps: fast"),
       {"word_for_number.yaml:9", "memory.bandwidth_gbps"}},
      {"unknown_key",
       replace(g, "  launch_us: 1\n", "  launch_us: 1\n  lanch_us: 2\n"),
       {"unknown_key.yaml", "lanch_us"}},
      {"bad_kind", replace(g, "kind: gpu", "kind: tpu"), {"bad_kind.yaml:2", "kind", "tpu"}},
      {"cpu_without_cores",
       replace(g, "kind: gpu", "kind: cpu"),
       {"cpu_without_cores.yaml", "compute.cores"}},
      {"no_comm", g.substr(0, g.find("comm:")), {"no_comm.yaml", "comm"}},
      {"zero_link",
       replace(g, "bandwidth_gbps: 10}", "bandwidth_gbps: 0}"),
       {"zero_link.yaml:14", "comm.intra_node.bandwidth_gbps"}},
      {"inter_link_without_nodes",
       g + "  measured:\n    - {ranks: 4, latency_us: 1, bandwidth_gbps: 2, inter_bandwidth_gbps: "
           "1}\n",
       {"inter_link_without_nodes.yaml", "comm.measured[0]", "needs ranks_per_node"}},
      {"measured_nodes_not_dividing",
       g + "  measured:\n    - {ranks: 4, latency_us: 1, bandwidth_gbps: 2, ranks_per_node: 3, "
           "inter_bandwidth_gbps: 1}\n",
       {"measured_nodes_not_dividing.yaml", "comm.measured[0].ranks_per_node", "divide ranks (4)"}},
      {"table_not_ascending",
       replace(g, "  attention_gflops: 100\n",
               "  attention_gflops: 100\n  gemm_table: [[4, 10], [2, 20]]\n"),
       {"table_not_ascending.yaml", "compute.gemm_table[1]", "ascending"}},
  };
  auto dir = temp_dir("badhw");
  for (const auto& c : cases) {
    auto path = dir / (c.name + ".yaml");
    if (!c.yaml.empty()) std::ofstream(path) << c.yaml;
    auto json = dir / (c.name + ".json");
    auto r = run(predict_cmd(path.string(), "--json " + json.string()));
    EXPECT_EQ(r.exit_code, 1) << c.name << ": " << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << c.name << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << c.name << ": " << r.out;
    for (const auto& m : c.must) {
      EXPECT_NE(r.err.find(m), std::string::npos) << c.name << " lacks '" << m << "': " << r.err;
    }
    EXPECT_FALSE(std::filesystem::exists(json)) << c.name;
  }
}

TEST(CostCli, BadPredictAndCalibrateArgumentsGetOneLine) {
  auto dir = temp_dir("badargs");
  auto hw = dir / "hw.yaml";
  std::ofstream(hw) << kGoodProfile;
  // Measured at 2 ranks on one node: nodes of 1 would contradict it.
  auto measured = dir / "measured.yaml";
  std::ofstream(measured) << kGoodProfile
                          << "  measured:\n    - {ranks: 2, collective_us: 1, bandwidth_gbps: 5}\n";
  struct Case {
    std::string name, cmd;
    int exit_code;
    std::string must;
  };
  const std::vector<Case> cases = {
      {"ranks_zero",
       moe_ep() + " predict --config " + source("configs/bench/tiny.yaml") + " --ranks 0", 2,
       "--ranks"},
      {"no_ranks",
       moe_ep() + " predict --config " + source("configs/bench/tiny.yaml") + " --hardware " +
           hw.string(),
       2, "--ranks"},
      {"no_config", moe_ep() + " predict --ranks 2 --hardware " + hw.string(), 2, "--config"},
      {"missing_config", moe_ep() + " predict --config nope.yaml --ranks 2", 1, "nope.yaml"},
      {"missing_hardware", predict_cmd((dir / "absent.yaml").string()), 1, "absent.yaml"},
      {"bad_placement", predict_cmd(hw.string(), "--placement scattered"), 1, "scattered"},
      {"bad_replicas", predict_cmd(hw.string(), "--placement replicated:x"), 1, "replicated:x"},
      {"bad_set", predict_cmd(hw.string(), "--set workload.prompt_len=-3"), 1, "prompt_len"},
      {"hostfile_and_ranks_per_node", predict_cmd(hw.string(), "--hostfile x --ranks-per-node 2"),
       1, "not both"},
      {"ranks_per_node_not_dividing", predict_cmd(hw.string(), "--ranks-per-node 3"), 1,
       "--ranks-per-node 3 does not divide the world size 2"},
      {"nodes_against_measured", predict_cmd(measured.string(), "--ranks-per-node 1"), 1,
       "measured 2 ranks in nodes of 2"},
      {"bad_exchange", predict_cmd(hw.string(), "--exchange ring"), 2, "--exchange"},
      {"missing_hostfile", predict_cmd(hw.string(), "--hostfile " + (dir / "nohosts").string()), 1,
       "nohosts: cannot open it"},
      {"calibrate_no_out", moe_ep() + " calibrate", 2, "--out"},
      {"calibrate_bad_threads", moe_ep() + " calibrate --out x.yaml --threads 0", 2, "--threads"},
      {"calibrate_merge_nothing",
       moe_ep() + " calibrate --merge --out " + (dir / "none.yaml").string(), 1, "none.yaml"},
      {"calibrate_bad_model",
       moe_ep() + " calibrate --out " + (dir / "o.yaml").string() + " --model nomodel.yaml", 1,
       "nomodel.yaml"},
  };
  for (const auto& c : cases) {
    auto r = run(c.cmd);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.name << ": " << r.err;
    EXPECT_GE(count_lines(r.err), 1) << c.name;
    if (c.exit_code == 1) {
      EXPECT_EQ(count_lines(r.err), 1) << c.name << ": " << r.err;
    }
    EXPECT_NE(r.err.find(c.must), std::string::npos)
        << c.name << " lacks '" << c.must << "': " << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "o.yaml"));
}

}  // namespace
}  // namespace moe::test
