// Placements fitted by `moe-ep place` (every strategy, replicas and the hierarchical variant
// included) run under mpirun and give the one-rank logits (max |diff| / max |ref| <= 1e-5):
// replicas hold identical weights, so the split rule changes only fp32 summation order.
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "parallel/placement.h"

namespace moe::test {
namespace {

TEST(PlacementMultiRank, EveryFittedStrategyMatchesOneRankLogits) {
  auto dir = temp_dir("placement_multirank");
  const std::string trace = tiny_zipf_trace(dir, 1.5, 1024);
  const std::string ref = (dir / "ref.npy").string();
  auto f = run(tiny_command(moe_ep(), "forward", kFiveSequences) + " --logits-out " + ref);
  ASSERT_EQ(f.exit_code, 0) << f.err;
  struct Case {
    int ranks;
    std::string args;
  };
  const std::vector<Case> cases = {{2, "--strategy load_balanced"},
                                   {4, "--strategy replicated --redundant 8"},
                                   {4, "--strategy replicated --redundant 8 --ranks-per-node 2"},
                                   {3, "--strategy replicated --redundant 13"},
                                   {4, "--strategy coactivation"}};
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const std::string yaml = (dir / ("p" + std::to_string(i) + ".yaml")).string();
    auto p = run(moe_ep() + " place --trace " + trace + " --ranks " + std::to_string(c.ranks) +
                 " " + c.args + " --out " + yaml);
    ASSERT_EQ(p.exit_code, 0) << c.args << p.err;
    const std::string npy = (dir / ("p" + std::to_string(i) + ".npy")).string();
    auto g = run(tiny_command(mpirun(c.ranks), "forward", kFiveSequences) + " --placement " + yaml +
                 " --logits-out " + npy);
    ASSERT_EQ(g.exit_code, 0) << c.args << g.err;
    EXPECT_LE(relative_max_diff(runtime::read_npy_f32(npy), runtime::read_npy_f32(ref)), 1e-5)
        << c.args;
  }
}

// Mode run: each cell is a real `moe-ep run` under the launcher; its JSON fills the same columns
// plus time per phase (max / mean over ranks).
TEST(PlacementMultiRank, RunModeExperimentRunsEachCellUnderTheLauncher) {
  auto dir = temp_dir("experiment_run");
  const std::string cfg = (dir / "run.yaml").string();
  std::ofstream(cfg) << "mode: run\nmodel: " << kTiny
                     << "\nrun_config: " << source("configs/bench/tiny.yaml")
                     << "\nlauncher: \"" MOE_MPIRUN
                        " --allow-run-as-root --oversubscribe -np "
                        "{ranks} -x OPENBLAS_NUM_THREADS=1\"\nranks: [2]\ntokens: 256\n"
                        "set: [\"workload.decode_steps=2\"]\nplacements:\n"
                        "  - {strategy: replicated, redundant: 8}\nworkloads:\n"
                        "  - {name: z, routing: {kind: zipf, s: 1.2, seed: 2}}\n";
  const std::string out = (dir / "out").string();
  auto r = run(moe_ep() + " experiment --config " + cfg + " --out " + out + " --no-plots");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("[1/1] z · 2 ranks · replicated(R=8)"), std::string::npos) << r.out;
  const nlohmann::json j = nlohmann::json::parse(read_text(out + "/results.json"));
  ASSERT_EQ(j["cells"].size(), 1u);
  const auto& cell = j["cells"][0];
  EXPECT_GT(cell["measured"]["mean_balancedness"].get<double>(), 0.0);
  EXPECT_GT(cell["measured"]["rows_sent_remote"].get<int64_t>(), 0);
  EXPECT_TRUE(cell["phases"].contains("dispatch")) << cell.dump();
  EXPECT_GE(cell["phases"]["dispatch"]["max_s"].get<double>(),
            cell["phases"]["dispatch"]["mean_s"].get<double>());
  // The placement it ran is on disk and loads.
  parallel::load_placement_spec(out + "/placements/z_2r_replicated_R_8_.yaml");
  EXPECT_NE(read_text(out + "/results.md").find("dispatch max / mean s"), std::string::npos);
}

}  // namespace
}  // namespace moe::test
