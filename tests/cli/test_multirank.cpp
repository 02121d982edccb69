// Expert parallelism end to end under mpirun: every world size and placement gives the one-rank
// logits (max |diff| / max |ref| <= 1e-5) and the same greedy tokens; dedup saves bytes; a
// fault on one rank ends the whole job quickly, naming the rank.
#include <nlohmann/json.hpp>

#include "cli_util.h"

namespace moe::test {
namespace {

// An explicit map: a scrambled assignment plus replicas of experts 0..15 on a second rank.
std::string explicit_placement(int n, const std::filesystem::path& dir) {
  std::vector<std::vector<int>> ranks(static_cast<size_t>(n));
  for (int e = 0; e < 128; ++e) ranks[static_cast<size_t>((e * 7 + 3) % n)].push_back(e);
  if (n > 1) {
    for (int e = 0; e < 16; ++e) ranks[static_cast<size_t>((e * 7 + 4) % n)].push_back(e);
  }
  std::string yaml = "strategy: explicit\nranks: " + std::to_string(n) + "\nlayers:\n  default: [";
  for (int r = 0; r < n; ++r) {
    yaml += (r ? ", [" : "[");
    for (size_t i = 0; i < ranks[r].size(); ++i)
      yaml += (i ? "," : "") + std::to_string(ranks[r][i]);
    yaml += "]";
  }
  yaml += "]\n";
  auto path = dir / ("explicit_" + std::to_string(n) + ".yaml");
  std::ofstream(path) << yaml;
  return path.string();
}

class MultiRank : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = temp_dir("multirank");
    ref_npy_ = (dir_ / "ref.npy").string();
    auto f = run(tiny_command(moe_ep(), "forward", kFiveSequences) + " --logits-out " + ref_npy_);
    ASSERT_EQ(f.exit_code, 0) << f.err;
    auto g = run(tiny_command(moe_ep(), "generate", kFiveSequences) + " --max-new-tokens 5");
    ASSERT_EQ(g.exit_code, 0) << g.err;
    ref_tokens_ = g.out;
  }
  void check(int n, const std::string& placement_arg, const std::string& label) {
    auto npy = (dir_ / (label + ".npy")).string();
    auto f = run(tiny_command(mpirun(n), "forward", kFiveSequences) + " " + placement_arg +
                 " --logits-out " + npy);
    ASSERT_EQ(f.exit_code, 0) << label << f.err;
    double rel = relative_max_diff(runtime::read_npy_f32(npy), runtime::read_npy_f32(ref_npy_));
    EXPECT_LE(rel, 1e-5) << label;
    auto g = run(tiny_command(mpirun(n), "generate", kFiveSequences) + " " + placement_arg +
                 " --max-new-tokens 5");
    ASSERT_EQ(g.exit_code, 0) << label << g.err;
    EXPECT_EQ(g.out, ref_tokens_) << label;
  }
  static inline std::filesystem::path dir_;
  static inline std::string ref_npy_, ref_tokens_;
};

TEST_F(MultiRank, ContiguousPlacementMatchesOneRankOn2_3_4_8Ranks) {
  for (int n : {2, 3, 4, 8}) check(n, "", "contiguous_" + std::to_string(n));
}

TEST_F(MultiRank, RoundRobinPlacementMatchesOneRank) {
  for (int n : {1, 2, 3, 4, 8}) {
    check(n, "--placement " + source("configs/placements/round_robin.yaml"),
          "rr_" + std::to_string(n));
  }
}

TEST_F(MultiRank, ExplicitPlacementWithReplicasMatchesOneRank) {
  for (int n : {1, 2, 3, 4, 8}) {
    check(n, "--placement " + explicit_placement(n, dir_), "explicit_" + std::to_string(n));
  }
}

TEST_F(MultiRank, PlacementWrittenForOtherWorldSizeFailsWithMessage) {
  auto path = explicit_placement(4, dir_);
  auto r = run(mpirun(3) + " forward --model " + kTiny + " --tokens 1,2 --placement " + path +
               " --logits-out " + (dir_ / "x.npy").string());
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("key 'ranks': written for 4 ranks but the job has 3 ranks"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(count_lines(r.err), 1) << r.err;
}

TEST_F(MultiRank, DedupSendsFewerBytesThanOneRowPerTokenExpert) {
  auto json = (dir_ / "dedup.json").string();
  auto r = run(tiny_command(mpirun(2), "forward", kFiveSequences) + " --json " + json +
               " --logits-out " + (dir_ / "d.npy").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(read_text(json));
  auto t = j["metrics"]["traffic"];
  EXPECT_GT(t["bytes_sent_remote"].get<int64_t>(), 0);
  EXPECT_LT(t["bytes_sent_remote"].get<int64_t>(), t["bytes_remote_without_dedup"].get<int64_t>());
  EXPECT_GT(t["bytes_kept_local"].get<int64_t>(), 0);
  // Per-layer load detail is present: tokens per expert sum to tokens x top-k.
  int64_t sum = 0;
  for (auto v : j["metrics"]["layers"][0]["tokens_per_expert"]) sum += v.get<int64_t>();
  EXPECT_EQ(sum, 22 * 8);
}

// `moe-ep plan` is the memory contract: for the run's own batch, context and placement it
// predicts the weights and KV cache of the largest rank exactly, and bounds the backend's peak
// (activation and exchange buffers are sized for worst-case routing).
TEST_F(MultiRank, RunMemoryMatchesThePlanWithReplicas) {
  auto json = (dir_ / "memory.json").string();
  auto r = run(mpirun(3) + " run --quiet --config " + source("configs/bench/tiny.yaml") +
               " --placement " + explicit_placement(3, dir_) + " --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("vs plan"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(read_text(json));
  const auto& mem = j["memory_max_per_rank"];
  const auto& plan = j["plan_per_rank"];
  for (const char* key : {"dense_replica_bytes", "expert_shard_bytes", "kv_cache_bytes"}) {
    EXPECT_EQ(mem[key].get<int64_t>(), plan[key].get<int64_t>()) << key;
  }
  const int64_t weights_kv = plan["dense_replica_bytes"].get<int64_t>() +
                             plan["expert_shard_bytes"].get<int64_t>() +
                             plan["kv_cache_bytes"].get<int64_t>();
  EXPECT_GT(mem["peak_backend_bytes"].get<int64_t>(), weights_kv);
  EXPECT_LE(mem["peak_backend_bytes"].get<int64_t>(), plan["total_bytes"].get<int64_t>());
  EXPECT_EQ(mem["device_used_delta_bytes"].get<int64_t>(), -1);  // CPU backend: host memory
}

TEST_F(MultiRank, InjectedFaultOnOneRankEndsFourRankJobNamingTheRank) {
  auto r =
      run("env MOE_EP_FAULT=rank=2,layer=1 " + mpirun(4, "-x MOE_EP_FAULT") + " generate --model " +
              kTiny + " --tokens " + kFiveSequences + " --max-new-tokens 4",
          60);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.seconds, 30.0);
  EXPECT_NE(r.err.find("rank 2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("injected fault at layer 1"), std::string::npos) << r.err;
}

TEST_F(MultiRank, StuckRankIsCaughtByCollectiveTimeout) {
  auto r = run("env MOE_EP_FAULT=rank=1,layer=0,mode=hang " + mpirun(4, "-x MOE_EP_FAULT") +
                   " generate --timeout 5 --model " + kTiny + " --tokens " + kFiveSequences +
                   " --max-new-tokens 2",
               60);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.seconds, 30.0);
  EXPECT_NE(r.err.find("did not complete within"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moe::test
