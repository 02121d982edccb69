// Multi-node runs on one machine. NetnsCluster: two "hosts" made of network namespaces with their
// own hostnames (tests/cluster/netns_cluster.sh), Open MPI's remote daemons started through a
// launch agent instead of ssh, TCP between the nodes: 2 x 2 ranks give the one-rank logits, the
// nodes come from MPI (unequal ones are refused), and a rank killed on the second node ends the
// whole job with one line naming it. SlurmCluster: a
// one-node Slurm started in a temporary directory (tests/cluster/slurm_cluster.sh): `srun` runs
// moe-ep, launch/moe-ep.sbatch runs as written, and an experiment runs its cells through an srun
// launcher. Each skips, saying why,
// where the machine does not allow it (no root, no namespaces, no Slurm); everything a test makes
// is removed in TearDown, whatever happened.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "tests/cli/cli_util.h"

namespace moe::test {
namespace {

const std::string kNetns = source("tests/cluster/netns_cluster.sh");
const std::string kSlurm = source("tests/cluster/slurm_cluster.sh");
const std::string kTokens = "\"1,2,3,4,5;6,7,8;9,10,11,12;13,14\"";

// Starts a cluster with `up` (exit 3: this machine cannot; the test skips with the reason).
class ClusterTest : public ::testing::Test {
 protected:
  void up(const std::string& script, const std::string& args) {
    script_ = script;
    dir_ = temp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_ / "cluster");
    const CommandResult r = run(script + " up " + (dir_ / "cluster").string() + " " + args, 60);
    if (r.exit_code == 3) GTEST_SKIP() << r.err;
    ASSERT_EQ(r.exit_code, 0) << r.err;
    started_ = true;
  }
  void TearDown() override {
    if (started_) run(script_ + " down " + (dir_ / "cluster").string(), 60);
  }
  std::string cluster() const { return (dir_ / "cluster").string(); }

  std::string script_;
  std::filesystem::path dir_;
  bool started_ = false;
};

class NetnsCluster : public ClusterTest {
 protected:
  void SetUp() override { up(kNetns, "2 2"); }
  // mpirun across the two nodes (from node0), two slots each.
  std::string mpirun_nodes(const std::string& args) const {
    return kNetns + " mpirun " + cluster() + " -x OPENBLAS_NUM_THREADS=1 " + args;
  }
};

TEST_F(NetnsCluster, TwoNodesOfTwoRanksGiveTheOneRankLogits) {
  const CommandResult hosts = run(mpirun_nodes("--quiet -np 4 hostname"), 60);
  ASSERT_EQ(hosts.exit_code, 0) << hosts.err;
  // Ranks print in whatever order their output reaches mpirun: compare the sorted lines.
  std::vector<std::string> names;
  std::stringstream lines(hosts.out);
  for (std::string line; std::getline(lines, line);) names.push_back(line);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"node0", "node0", "node1", "node1"})) << hosts.out;

  const std::string one = (dir_ / "one.npy").string(), four = (dir_ / "four.npy").string();
  const CommandResult a = run(tiny_command(moe_ep(), "forward", kTokens) + " --logits-out " + one);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const CommandResult b =
      run(mpirun_nodes("--quiet -np 4 " + tiny_command(moe_ep(), "forward", kTokens) +
                       " --logits-out " + four),
          120);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_LE(relative_max_diff(runtime::read_npy_f32(four), runtime::read_npy_f32(one)), 1e-5);
}

// The node-first exchange (the default across nodes) and the flat one give the one-rank logits,
// and the rows that cross between the nodes shrink by the factor the placement analysis predicts
// from the run's own routing trace (every token on one rank's node: node-first inter-node rows
// are exactly one per (token, other node), which the analysis counts the same way).
TEST_F(NetnsCluster, NodeFirstExchangeCrossesNodesLessByThePredictedFactor) {
  const std::string one = (dir_ / "one.npy").string();
  ASSERT_EQ(run(tiny_command(moe_ep(), "forward", kTokens) + " --logits-out " + one).exit_code, 0);
  const auto reference = runtime::read_npy_f32(one);
  std::map<std::string, int64_t> inter_rows;
  for (const std::string exchange : {"flat", "hierarchical"}) {
    SCOPED_TRACE(exchange);
    const std::string logits = (dir_ / (exchange + ".npy")).string();
    const CommandResult f =
        run(mpirun_nodes("--quiet -np 4 " + tiny_command(moe_ep(), "forward", kTokens) +
                         " --exchange " + exchange + " --logits-out " + logits),
            120);
    ASSERT_EQ(f.exit_code, 0) << f.err;
    EXPECT_LE(relative_max_diff(runtime::read_npy_f32(logits), reference), 1e-5);
    const std::string json = (dir_ / (exchange + ".json")).string();
    const std::string trace = (dir_ / "trace.safetensors").string();
    const CommandResult r = run(
        mpirun_nodes("--quiet -np 4 " + moe_ep() + " run --quiet --config " +
                     source("configs/bench/tiny.yaml") + " --exchange " + exchange + " --json " +
                     json + (exchange == "flat" ? " --trace-out " + trace : std::string())),
        120);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(read_text(json));
    EXPECT_EQ(j["exchange"].get<std::string>(), exchange);
    inter_rows[exchange] = j["metrics"]["traffic"]["rows_sent_inter_node"].get<int64_t>();
    EXPECT_GT(j["metrics"]["traffic"]["bytes_sent_inter_node"].get<int64_t>(), 0);
    // Two collectives per level and MoE layer.
    EXPECT_EQ(j["metrics"]["traffic"]["max_collectives_per_layer"]["decode"].get<int>(),
              exchange == "flat" ? 2 : 4);
  }
  const std::string analysis = (dir_ / "place.json").string();
  const CommandResult p = run(moe_ep() + " place --trace " + (dir_ / "trace.safetensors").string() +
                              " --ranks 4 --strategy contiguous --ranks-per-node 2 --model " +
                              source("configs/models/tiny.yaml") + " --out " +
                              (dir_ / "p.yaml").string() + " --json " + analysis);
  ASSERT_EQ(p.exit_code, 0) << p.err;
  const auto nodes = nlohmann::json::parse(read_text(analysis))["nodes"];
  EXPECT_EQ(inter_rows["hierarchical"], nodes["node_first"]["inter_node_rows"].get<int64_t>());
  // The flat count depends on which rank holds each token, which the analysis of a trace can
  // only approximate (it splits the trace's rows evenly): within 5%.
  const double predicted = nodes["inter_node_dedup"].get<double>();
  const double measured = static_cast<double>(inter_rows["flat"]) / inter_rows["hierarchical"];
  EXPECT_GT(measured, 1.0);
  EXPECT_NEAR(measured, predicted, 0.05 * predicted);
}

// Nodes come from MPI: run --json reports the two nodes of two ranks, and three ranks on nodes of
// two and one are refused on every rank with one line naming the node sizes.
TEST_F(NetnsCluster, NodesComeFromMpiAndUnequalNodesAreRefused) {
  const std::string json = (dir_ / "run.json").string();
  const CommandResult r = run(mpirun_nodes("--quiet -np 4 " + moe_ep() + " run --quiet --config " +
                                           source("configs/bench/tiny.yaml") + " --json " + json),
                              120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(read_text(json));
  EXPECT_EQ(j["nodes"].get<int>(), 2);
  EXPECT_EQ(j["ranks_per_node"].get<int>(), 2);

  const CommandResult bad =
      run(mpirun_nodes("--quiet -np 3 " + moe_ep() + " run --quiet --config " +
                       source("configs/bench/tiny.yaml")),
          60);
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(
      bad.err.find("mismatched node layout (from MPI_Comm_split_type): nodes hold 2, 1 ranks"),
      std::string::npos)
      << bad.err;
}

// The pids of moe-ep ranks in node1's namespace, as "rank pid" lines.
std::string rank_pids(const std::string& cluster) {
  const CommandResult r = run(kNetns + " pids " + cluster + " node1", 10);
  std::stringstream pids(r.out), out;
  for (std::string pid; pids >> pid;) {
    std::ifstream env("/proc/" + pid + "/environ");
    std::string entry;
    while (std::getline(env, entry, '\0')) {
      if (entry.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0)
        out << entry.substr(21) << " " << pid << "\n";
    }
  }
  return out.str();
}

TEST_F(NetnsCluster, ARankKilledOnTheSecondNodeEndsTheJobWithOneLineNamingIt) {
  // Rank 3 (on node1) stops in its first MoE layer; once it is there it is killed.
  auto job = std::async(std::launch::async, [&] {
    return run(mpirun_nodes("-np 4 -x MOE_EP_FAULT=rank=3,layer=0,mode=hang " +
                            tiny_command(moe_ep(), "generate", kTokens) +
                            " --timeout 60 --max-new-tokens 4"),
               90);
  });
  int victim = -1;
  for (int i = 0; i < 300 && victim < 0; ++i) {  // at most 30 s
    std::stringstream lines(rank_pids(cluster()));
    for (int rank = 0, pid = 0; lines >> rank >> pid;) {
      if (rank == 3) victim = pid;
    }
    if (victim < 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GT(victim, 0) << "rank 3 never started on node1";
  std::this_thread::sleep_for(std::chrono::seconds(2));  // into its first layer
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const CommandResult r = job.get();
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.seconds, 60.0) << "the job outlived the killed rank";
  int naming = 0;
  std::stringstream err(r.err);
  for (std::string line; std::getline(err, line);) {
    if (line.find("rank 3") != std::string::npos) {
      ++naming;
      EXPECT_NE(line.find("node1"), std::string::npos) << line;
    }
  }
  EXPECT_EQ(naming, 1) << r.err;
}

class SlurmCluster : public ClusterTest {
 protected:
  void SetUp() override { up(kSlurm, ""); }
  std::string slurm_env() const { return "env SLURM_CONF=" + cluster() + "/slurm.conf "; }
};

TEST_F(SlurmCluster, SrunRunsTheTinyWorkloadOnTwoRanks) {
  const std::string json = (dir_ / "run.json").string();
  const CommandResult r =
      run(slurm_env() + "srun -n 2 --export=ALL,OPENBLAS_NUM_THREADS=1 " + moe_ep() +
              " run --quiet --config " + source("configs/bench/tiny.yaml") + " --json " + json,
          120);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(read_text(json));
  EXPECT_EQ(j["ranks"].get<int>(), 2);
}

// launch/moe-ep.sbatch as its comment says to submit it.
TEST_F(SlurmCluster, TheBatchScriptRunsAsWritten) {
  const std::string json = (dir_ / "batch.json").string();
  const CommandResult r =
      run(slurm_env() + "MOE_EP_BIN=" + moe_ep() + " sbatch --wait -n 2 --chdir=" + source("") +
              " -o " + (dir_ / "batch.out").string() + " " + source("launch/moe-ep.sbatch") +
              " run --quiet --config configs/bench/tiny.yaml --json " + json,
          180);
  ASSERT_EQ(r.exit_code, 0) << r.err << read_text(dir_ / "batch.out");
  EXPECT_EQ(nlohmann::json::parse(read_text(json))["ranks"].get<int>(), 2);
}

TEST_F(SlurmCluster, AnExperimentRunsItsCellsThroughAnSrunLauncher) {
  const std::string config = (dir_ / "experiment.yaml").string();
  std::ofstream(config) << "name: srun cells\nmode: run\nmodel: "
                        << source("configs/models/tiny.yaml")
                        << "\nrun_config: " << source("configs/bench/tiny.yaml")
                        << "\nlauncher: \"srun -n {ranks} --export=ALL,OPENBLAS_NUM_THREADS=1\""
                        << "\nranks: [2]\nset: [\"workload.num_sequences=4\", "
                           "\"workload.prompt_len=8\", \"workload.decode_steps=2\"]"
                        << "\ntokens: 256\nplacements:\n  - strategy: contiguous\n"
                        << "workloads:\n  - {name: zipf, routing: {kind: zipf, s: 1.2, seed: 1}}\n";
  const std::string out = (dir_ / "results").string();
  const CommandResult r =
      run(slurm_env() + moe_ep() + " experiment --config " + config + " --out " + out, 180);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(read_text(out + "/results.json"));
  ASSERT_FALSE(j["cells"].empty()) << j.dump();
  EXPECT_EQ(j["cells"][0]["ranks"].get<int>(), 2) << j.dump();
}

}  // namespace
}  // namespace moe::test
