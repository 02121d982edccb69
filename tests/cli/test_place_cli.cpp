// `moe-ep place` and `moe-ep experiment` through the real executable: a placement fitted on a
// trace round-trips through YAML and the printed figures are the analysis of the file it wrote;
// an analyze experiment writes its three result files; bad experiment, placement and trace
// inputs each end with exit 1 and one line naming the file and the problem.
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "parallel/placement.h"
#include "runtime/analysis/placement_analysis.h"
#include "runtime/io/config.h"
#include "runtime/io/trace.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::test {
namespace {

TEST(PlaceCli, ReplicatedPlacementRoundTripsAndReportsItsOwnAnalysis) {
  auto dir = temp_dir("place");
  const std::string trace = tiny_zipf_trace(dir, 1.2, 2048);
  const std::string yaml = (dir / "rep.yaml").string(), json = (dir / "rep.json").string();
  auto r = run(moe_ep() + " place --trace " + trace +
               " --ranks 4 --strategy replicated --redundant 8 --model " + kTiny + " --out " +
               yaml + " --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("overall: balancedness mean"), std::string::npos) << r.out;
  EXPECT_EQ(count_lines(r.out), 2 + 1 + 3 + 2) << r.out;  // header, table head, 3 layers, footer
  // The file loads as an ordinary explicit placement with 34 slots per rank.
  const parallel::PlacementSpec spec = parallel::load_placement_spec(yaml);
  EXPECT_EQ(spec.strategy, "explicit");
  const runtime::ModelConfig config = runtime::load_model_config(kTiny);
  const parallel::Placement p = parallel::Placement::build(spec, config.moe_layers(), 128, 4);
  for (int l = 0; l < 3; ++l) {
    for (int rank = 0; rank < 4; ++rank) EXPECT_EQ(p.layer(l).num_local_slots(rank), 34);
  }
  // What it printed is the analysis of the file as loaded.
  const runtime::PlacementReport rep =
      runtime::analyze_placement(runtime::read_trace(trace), p, {.hidden = 64});
  const nlohmann::json j = nlohmann::json::parse(read_text(json));
  EXPECT_DOUBLE_EQ(j["mean_balancedness"].get<double>(), rep.mean_balancedness);
  EXPECT_EQ(j["rows_sent_remote"].get<int64_t>(), rep.traffic.rows_sent_remote);
  EXPECT_EQ(j["layers"].size(), 3u);
  EXPECT_GE(rep.mean_balancedness, 0.95);
}

TEST(PlaceCli, TraceForAnotherModelAndBadStrategyArgumentsFail) {
  auto dir = temp_dir("place_bad");
  const std::string trace = tiny_zipf_trace(dir, 1.2, 64);
  // A model with 8 experts: the trace's 128 do not match.
  const std::string small = (dir / "small.yaml").string();
  std::ofstream(small) << read_text(kTiny).replace(read_text(kTiny).find("num_experts: 128"), 16,
                                                   "num_experts: 8");
  auto r =
      run(moe_ep() + " place --trace " + trace + " --ranks 2 --strategy load_balanced --model " +
          small + " --out " + (dir / "x.yaml").string());
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.err.find(trace), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("trace has 128 experts"), std::string::npos) << r.err;
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  // --redundant without 'replicated' is one line, exit 1.
  r = run(moe_ep() + " place --trace " + trace +
          " --ranks 2 --strategy load_balanced --redundant 4 --out " + (dir / "y.yaml").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("need strategy 'replicated'"), std::string::npos) << r.err;
  // An unknown strategy is a usage error.
  r = run(moe_ep() + " place --trace " + trace + " --ranks 2 --strategy eplb --out x.yaml");
  EXPECT_EQ(r.exit_code, 2);
  // A missing trace file names the file.
  r = run(moe_ep() + " place --trace " + (dir / "none.safetensors").string() +
          " --ranks 2 --strategy load_balanced --out " + (dir / "z.yaml").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("none.safetensors"), std::string::npos) << r.err;
}

const char* kGoodExperiment = R"(name: t
mode: analyze
model: MODEL
ranks: [2, 4]
tokens: 512
placements:
  - strategy: contiguous
  - {strategy: replicated, redundant: 4}
  - {strategy: coactivation, min_balancedness: 0.8}
workloads:
  - {name: zipf, routing: {kind: zipf, s: 1.2, seed: 3}}
  - {name: topics, routing: {kind: topics, seed: 3}}
)";

std::string experiment_text(const std::string& from, const std::string& to) {
  std::string s = kGoodExperiment;
  s.replace(s.find("MODEL"), 5, kTiny);
  if (!from.empty()) {
    const size_t pos = s.find(from);
    EXPECT_NE(pos, std::string::npos) << from;
    s.replace(pos, from.size(), to);
  }
  return s;
}

TEST(ExperimentCli, AnalyzeWritesTheThreeResultFilesWithOneRowPerCell) {
  auto dir = temp_dir("experiment");
  const std::string cfg = (dir / "exp.yaml").string();
  std::ofstream(cfg) << experiment_text("", "");
  const std::string out = (dir / "out").string();
  auto r = run(moe_ep() + " experiment --config " + cfg + " --out " + out + " --no-plots");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int i = 1; i <= 12; ++i) {
    EXPECT_NE(r.out.find("[" + std::to_string(i) + "/12]"), std::string::npos) << r.out;
  }
  const std::string csv = read_text(out + "/results.csv");
  EXPECT_EQ(count_lines(csv), 1 + 12);
  const std::string md = read_text(out + "/results.md");
  EXPECT_NE(md.find("| topics | 4 | coactivation(b>=0.8) |"), std::string::npos) << md;
  const nlohmann::json j = nlohmann::json::parse(read_text(out + "/results.json"));
  ASSERT_EQ(j["cells"].size(), 12u);
  for (const auto& c : j["cells"]) {
    const auto per_rank = c["measured"]["pairs_per_rank"].get<std::vector<int64_t>>();
    int64_t pairs = 0;
    for (int64_t v : per_rank) pairs += v;
    EXPECT_EQ(per_rank.size(), c["ranks"].get<size_t>());
    EXPECT_EQ(pairs, 512 * 8 * 3) << "every held-out pair of the 3 layers lands on some rank";
  }
}

struct BadExperiment {
  std::string name, from, to;
  std::vector<std::string> must;
};

TEST(ExperimentCli, BadExperimentFilesFailWithOneLineNamingFileLineAndKey) {
  auto dir = temp_dir("experiment_bad");
  const std::vector<BadExperiment> cases = {
      {"missing_ranks", "ranks: [2, 4]\n", "", {"missing_ranks.yaml", "'ranks'", "missing"}},
      {"wrong_type", "ranks: [2, 4]", "ranks: many", {"wrong_type.yaml:4", "'ranks'"}},
      {"bad_rank", "ranks: [2, 4]", "ranks: [2, 4096]", {"bad_rank.yaml:4", "1..1024"}},
      {"unknown_strategy",
       "strategy: contiguous",
       "strategy: eplb",
       {"unknown_strategy.yaml:7", "placements[0].strategy", "unknown strategy 'eplb'"}},
      {"redundant_elsewhere",
       "- strategy: contiguous",
       "- {strategy: contiguous, redundant: 2}",
       {"redundant_elsewhere.yaml:7", "placements[0].redundant", "replicated"}},
      {"unknown_key",
       "tokens: 512",
       "tokenz: 512",
       {"unknown_key.yaml:5", "tokenz", "unknown key"}},
      {"bad_routing", "kind: zipf", "kind: zipff", {"bad_routing.yaml:11", "workloads[0].routing"}},
      {"router",
       "{kind: zipf, s: 1.2, seed: 3}",
       "{kind: router}",
       {"router.yaml:11", "workloads[0].routing", "router"}},
      {"bad_mode", "mode: analyze", "mode: simulate", {"bad_mode.yaml:2", "'mode'"}},
      {"hostfile_in_analyze",
       "tokens: 512",
       "tokens: 512\nhostfile: hosts\nlauncher: \"mpirun --hostfile {hostfile} -np {ranks}\"",
       {"hostfile_in_analyze.yaml:6", "'hostfile'", "only mode 'run'"}},
      {"hostfile_slot_without_hostfile",
       "tokens: 512",
       "tokens: 512\nlauncher: \"mpirun --hostfile {hostfile} -np {ranks}\"",
       {"hostfile_slot_without_hostfile.yaml:6", "'launcher'", "sets no hostfile"}},
      {"no_launcher_slot",
       "tokens: 512",
       "tokens: 512\nlauncher: srun",
       {"no_launcher_slot.yaml:6", "{ranks}"}},
  };
  for (const BadExperiment& c : cases) {
    const std::string cfg = (dir / (c.name + ".yaml")).string();
    std::ofstream(cfg) << experiment_text(c.from, c.to);
    auto r = run(moe_ep() + " experiment --config " + cfg + " --out " + (dir / "o").string() +
                 " --no-plots");
    EXPECT_EQ(r.exit_code, 1) << c.name << ": " << r.out;
    EXPECT_EQ(count_lines(r.err), 1) << c.name << ": " << r.err;
    for (const std::string& m : c.must) {
      EXPECT_NE(r.err.find(m), std::string::npos) << c.name << " lacks '" << m << "': " << r.err;
    }
  }
}

// A run experiment's hostfile is read before any cell runs: a bad line, or a rank count that
// would leave a node part-filled, ends it with one line.
TEST(ExperimentCli, HostfileIsCheckedBeforeAnyCellRuns) {
  auto dir = temp_dir("experiment_hostfile");
  std::ofstream(dir / "good") << "n0 slots=2\nn1 slots=2\n";
  std::ofstream(dir / "bad") << "n0 slots=2\nn1 slots=3\n";
  const auto text = [&](const std::string& hosts, const std::string& ranks) {
    std::string yaml = experiment_text(
        "mode: analyze\n", "mode: run\nrun_config: " + source("configs/bench/tiny.yaml") +
                               "\nhostfile: " + hosts +
                               "\nlauncher: \"mpirun --hostfile {hostfile} -np {ranks}\"\n");
    return yaml.replace(yaml.find("ranks: [2, 4]"), 13, "ranks: " + ranks);
  };
  struct Case {
    std::string hosts, ranks, must;
  };
  for (const Case& c : std::vector<Case>{
           {"bad", "[2, 4]", "bad:2: mismatched node layout: host n1 has slots=3"},
           {"good", "[2, 3]", "ranks 3: mismatched node layout: 3 ranks fill hostfile"},
           {"good", "[8]", "ranks 8: 8 ranks do not fit hostfile"}}) {
    const std::string cfg = (dir / "exp.yaml").string();
    std::ofstream(cfg) << text(c.hosts, c.ranks);
    auto r = run(moe_ep() + " experiment --config " + cfg + " --out " + (dir / "o").string() +
                 " --no-plots");
    EXPECT_EQ(r.exit_code, 1) << r.out;
    EXPECT_EQ(count_lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(c.must), std::string::npos) << c.must << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir / "o" / "runs")) << "no cell may have run";
  }
}

TEST(ExperimentCli, ReplayedTraceOfAnotherShapeFailsNamingTheTrace) {
  auto dir = temp_dir("experiment_replay");
  runtime::RoutingSpec spec;
  spec.kind = "uniform";
  runtime::SyntheticRouting eight(spec, {.num_experts = 8, .top_k = 2, .num_layers = 3});
  const std::string trace = (dir / "eight.safetensors").string();
  runtime::write_trace(trace, runtime::generate_trace(eight, {0, 1, 2}, 64));
  const std::string cfg = (dir / "replay.yaml").string();
  std::ofstream(cfg) << experiment_text("{kind: zipf, s: 1.2, seed: 3}",
                                        "{kind: replay, trace: " + trace + "}");
  auto r = run(moe_ep() + " experiment --config " + cfg + " --out " + (dir / "o").string() +
               " --no-plots");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("eight.safetensors"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("trace has 8 experts"), std::string::npos) << r.err;
}

TEST(ExperimentCli, PlacementFileWithAnExpertOutOfRangeFailsNamingIt) {
  auto dir = temp_dir("placement_bad");
  const std::string p = (dir / "bad.yaml").string();
  std::ofstream(p) << "strategy: explicit\nranks: 1\nlayers:\n  default: [[0, 1, 200]]\n";
  auto r = run(moe_ep() + " plan --model " + kTiny + " --placement " + p);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("bad.yaml"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("expert 200 does not exist"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moe::test
