// Placement: strategies (uneven shards included), explicit YAML with replicas and per-layer
// overrides, the shipped configs/placements files, and every error case with its message.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "kernels/common/check.h"
#include "parallel/placement.h"

namespace moe::parallel {
namespace {

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "moe_placement_" + name;
  std::ofstream(path) << text;
  return path;
}

// Runs `f`, expects a moe::Error and returns its message.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const moe::Error& e) {
    return e.message();
  }
  ADD_FAILURE() << "expected a moe::Error";
  return "";
}

std::vector<bool> all_moe(int layers) {
  return std::vector<bool>(layers, true);
}

// Every expert exactly once across ranks (no replicas).
void expect_partition(const LayerPlacement& p, int num_experts, int num_ranks) {
  p.validate(num_experts, num_ranks, "test");
  std::vector<int> count(num_experts, 0);
  for (const auto& list : p.rank_experts) {
    for (int e : list) ++count[e];
  }
  for (int e = 0; e < num_experts; ++e) EXPECT_EQ(count[e], 1) << "expert " << e;
}

TEST(PlacementStrategy, ContiguousSplits128ExpertsUnevenlyOn3_5_7RanksFirstRanksTakeOneMore) {
  for (int n : {1, 2, 3, 4, 5, 7, 8}) {
    auto lists = contiguous_placement(128, n);
    ASSERT_EQ(static_cast<int>(lists.size()), n);
    int next = 0;
    for (int r = 0; r < n; ++r) {
      const int want = 128 / n + (r < 128 % n ? 1 : 0);
      EXPECT_EQ(static_cast<int>(lists[r].size()), want) << "n=" << n << " rank " << r;
      for (int e : lists[r]) EXPECT_EQ(e, next++) << "blocks must be contiguous and in order";
    }
    EXPECT_EQ(next, 128);
    expect_partition(LayerPlacement::from_rank_experts(lists, 128), 128, n);
  }
  auto three = contiguous_placement(128, 3);
  EXPECT_EQ(three[0].size(), 43u);
  EXPECT_EQ(three[1].size(), 43u);
  EXPECT_EQ(three[2].size(), 42u);
}

TEST(PlacementStrategy, ContiguousWithMoreRanksThanExpertsLeavesSomeRanksEmpty) {
  auto lists = contiguous_placement(3, 5);
  EXPECT_EQ(lists[0], std::vector<int>{0});
  EXPECT_EQ(lists[2], std::vector<int>{2});
  EXPECT_TRUE(lists[3].empty());
  EXPECT_TRUE(lists[4].empty());
  expect_partition(LayerPlacement::from_rank_experts(lists, 3), 3, 5);
}

TEST(PlacementStrategy, RoundRobinPutsExpertEOnRankEModNAtSlotEDivN) {
  for (int n : {1, 3, 5, 7}) {
    auto p = LayerPlacement::from_rank_experts(round_robin_placement(128, n), 128);
    expect_partition(p, 128, n);
    for (int e = 0; e < 128; ++e) {
      ASSERT_EQ(p.expert_slots[e].size(), 1u);
      EXPECT_EQ(p.expert_slots[e][0].rank, e % n);
      EXPECT_EQ(p.expert_slots[e][0].local_slot, e / n);
    }
  }
}

TEST(PlacementBuild, DenseLayersGetAnEmptyPlacementWithOneListPerRank) {
  PlacementSpec spec;
  spec.strategy = "round_robin";
  Placement p = Placement::build(spec, {false, true, false}, 16, 3);
  EXPECT_EQ(p.num_layers(), 3);
  EXPECT_EQ(p.strategy(), "round_robin");
  for (int l : {0, 2}) {
    EXPECT_EQ(p.layer(l).num_experts(), 0);
    EXPECT_EQ(p.layer(l).num_ranks(), 3);
    for (int r = 0; r < 3; ++r) EXPECT_EQ(p.layer(l).num_local_slots(r), 0);
  }
  EXPECT_EQ(p.layer(1).num_experts(), 16);
  EXPECT_EQ(p.layer(1).num_local_slots(0), 6);
}

TEST(PlacementYaml, ExplicitMapWithReplicasAndALayerOverrideBuildsSlotsInListedOrder) {
  auto path = write_temp("replicas.yaml", R"(strategy: explicit
ranks: 2
layers:
  default:
    - [0, 1, 2, 5]
    - [3, 4, 5, 6, 7, 0]
  1:
    - [7, 6, 5, 4]
    - [3, 2, 1, 0]
)");
  PlacementSpec spec = load_placement_spec(path);
  EXPECT_EQ(spec.strategy, "explicit");
  ASSERT_TRUE(spec.num_ranks.has_value());
  EXPECT_EQ(*spec.num_ranks, 2);
  ASSERT_TRUE(spec.default_layer.has_value());
  ASSERT_EQ(spec.layers.size(), 1u);
  EXPECT_EQ(spec.layers[0].first, 1);

  Placement p = Placement::build(spec, all_moe(3), 8, 2);
  const LayerPlacement& l0 = p.layer(0);
  // Replicated experts list their slots in ascending rank order.
  ASSERT_EQ(l0.expert_slots[5].size(), 2u);
  EXPECT_EQ(l0.expert_slots[5][0].rank, 0);
  EXPECT_EQ(l0.expert_slots[5][0].local_slot, 3);
  EXPECT_EQ(l0.expert_slots[5][1].rank, 1);
  EXPECT_EQ(l0.expert_slots[5][1].local_slot, 2);
  ASSERT_EQ(l0.expert_slots[0].size(), 2u);
  EXPECT_EQ(l0.expert_slots[0][1].local_slot, 5);
  EXPECT_EQ(l0.expert_slots[3].size(), 1u);
  EXPECT_EQ(p.layer(2).rank_experts, l0.rank_experts) << "layer 2 uses the default map";
  // Layer 1 override: local slot order follows the list.
  EXPECT_EQ(p.layer(1).rank_experts[0], (std::vector<int>{7, 6, 5, 4}));
  EXPECT_EQ(p.layer(1).expert_slots[4][0].local_slot, 3);
}

TEST(PlacementYaml, ContiguousAndRoundRobinFilesNeedNoRankCount) {
  auto path = write_temp("rr.yaml", "strategy: round_robin\n");
  PlacementSpec spec = load_placement_spec(path);
  EXPECT_FALSE(spec.num_ranks.has_value());
  for (int n : {1, 3, 7}) {
    Placement p = Placement::build(spec, all_moe(2), 128, n);
    EXPECT_EQ(p.num_ranks(), n);
    EXPECT_EQ(p.layer(1).expert_slots[10][0].rank, 10 % n);
  }
}

TEST(PlacementYaml, ShippedPlacementFilesBuildForTheTinyModel) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(MOE_SOURCE_DIR) / "configs" / "placements";
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    ++files;
    SCOPED_TRACE(entry.path().string());
    PlacementSpec spec = load_placement_spec(entry.path().string());
    std::vector<int> sizes =
        spec.num_ranks ? std::vector<int>{*spec.num_ranks} : std::vector<int>{1, 2, 3, 5, 7, 8};
    for (int n : sizes) {
      Placement p = Placement::build(spec, all_moe(3), 128, n);  // tiny: 3 MoE layers
      for (int l = 0; l < 3; ++l) p.layer(l).validate(128, n, "shipped");
    }
  }
  EXPECT_GE(files, 4);
}

TEST(PlacementErrors, FileWrittenFor4RanksOn3RanksSaysSo) {
  auto path = write_temp("four.yaml", "strategy: contiguous\nranks: 4\n");
  PlacementSpec spec = load_placement_spec(path);
  std::string msg = error_of([&] { Placement::build(spec, all_moe(2), 128, 3); });
  EXPECT_EQ(msg, path + ": key 'ranks': written for 4 ranks but the job has 3 ranks");
}

TEST(PlacementErrors, ExplicitMapWithWrongNumberOfRankListsNamesTheLayerKey) {
  auto path =
      write_temp("lists.yaml", "strategy: explicit\nlayers:\n  default: [[0, 1], [2, 3]]\n");
  PlacementSpec spec = load_placement_spec(path);
  std::string msg = error_of([&] { Placement::build(spec, all_moe(1), 4, 3); });
  EXPECT_EQ(msg,
            path + ": key 'layers.default': lists experts for 2 ranks but the job has 3 ranks");
}

TEST(PlacementErrors, ListCountDisagreeingWithRanksKeyFailsWhileParsing) {
  auto path = write_temp("disagree.yaml",
                         "strategy: explicit\nranks: 3\nlayers:\n  default: [[0, 1], [2, 3]]\n");
  std::string msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find("layers.default"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2 ranks but key 'ranks' says 3"), std::string::npos) << msg;
}

TEST(PlacementErrors, ExpertWithoutAnySlotIsNamed) {
  auto path = write_temp("missing.yaml", "strategy: explicit\nlayers:\n  default: [[0, 1], [3]]\n");
  PlacementSpec spec = load_placement_spec(path);
  std::string msg = error_of([&] { Placement::build(spec, all_moe(1), 4, 2); });
  EXPECT_NE(msg.find("1 expert(s) have no slot on any rank: 2"), std::string::npos) << msg;
}

TEST(PlacementErrors, ExpertIdBeyondTheModelIsNamedWithItsKey) {
  auto path =
      write_temp("range.yaml", "strategy: explicit\nlayers:\n  default: [[0, 1], [2, 9]]\n");
  PlacementSpec spec = load_placement_spec(path);
  std::string msg = error_of([&] { Placement::build(spec, all_moe(1), 4, 2); });
  EXPECT_NE(msg.find("key 'layers.default[1]': expert 9 does not exist"), std::string::npos) << msg;
}

TEST(PlacementErrors, SameExpertTwiceOnOneRankIsRejected) {
  auto path =
      write_temp("twice.yaml", "strategy: explicit\nlayers:\n  default: [[0, 1, 1], [2, 3]]\n");
  PlacementSpec spec = load_placement_spec(path);
  std::string msg = error_of([&] { Placement::build(spec, all_moe(1), 4, 2); });
  EXPECT_NE(msg.find("expert 1 is listed twice for rank 0"), std::string::npos) << msg;
}

TEST(PlacementErrors, UnknownStrategyListsTheKnownOnesWithFileAndLine) {
  auto path = write_temp("unknown.yaml", "# comment\nstrategy: load_balanced\n");
  std::string msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find(path + ":2: key 'strategy': unknown strategy 'load_balanced'"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("known: contiguous, round_robin, explicit"), std::string::npos) << msg;
  PlacementSpec spec;
  spec.strategy = "replicated";
  msg = error_of([&] { Placement::build(spec, all_moe(1), 8, 2); });
  EXPECT_NE(msg.find("unknown strategy 'replicated'"), std::string::npos) << msg;
}

TEST(PlacementErrors, InvalidYamlNamesTheLine) {
  auto path = write_temp("bad.yaml", "strategy: explicit\nlayers:\n  default: [[0, 1], [2\n");
  std::string msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find(path + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not valid YAML"), std::string::npos) << msg;
}

TEST(PlacementErrors, UnknownTopLevelKeyIsRejected) {
  auto path = write_temp("typo.yaml", "strategy: contiguous\nrank: 4\n");
  std::string msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find(path + ":2: key 'rank': unknown key"), std::string::npos) << msg;
}

TEST(PlacementErrors, MissingFileAndMissingStrategyAreReported) {
  std::string msg = error_of([&] { load_placement_spec("/nonexistent/placement.yaml"); });
  EXPECT_NE(msg.find("/nonexistent/placement.yaml: file not found"), std::string::npos) << msg;
  auto path = write_temp("nostrategy.yaml", "ranks: 2\n");
  msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find("key 'strategy': missing required key"), std::string::npos) << msg;
}

TEST(PlacementErrors, NonIntegerExpertIdNamesItsPosition) {
  auto path = write_temp("nonint.yaml", "strategy: explicit\nlayers:\n  default: [[0, x], [1]]\n");
  std::string msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find(":3: key 'layers.default[0][1]': expected an integer, got 'x'"),
            std::string::npos)
      << msg;
}

TEST(PlacementErrors, LayerMapsOnlyGoWithExplicitStrategy) {
  auto path = write_temp("layers_rr.yaml", "strategy: round_robin\nlayers:\n  default: [[0]]\n");
  std::string msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find("key 'layers': per-layer maps are only read with strategy 'explicit'"),
            std::string::npos)
      << msg;
  auto path2 = write_temp("nolayers.yaml", "strategy: explicit\n");
  msg = error_of([&] { load_placement_spec(path2); });
  EXPECT_NE(msg.find("strategy 'explicit' needs a 'layers' map"), std::string::npos) << msg;
}

TEST(PlacementErrors, LayerIndexOutOfRangeOrDenseIsRejected) {
  auto path = write_temp(
      "layer9.yaml",
      "strategy: explicit\nlayers:\n  9: [[0, 1], [2, 3]]\n  default: [[0, 1], [2, 3]]\n");
  PlacementSpec spec = load_placement_spec(path);
  std::string msg = error_of([&] { Placement::build(spec, all_moe(3), 4, 2); });
  EXPECT_EQ(msg, path + ": key 'layers.9': the model has layers 0..2");
  auto path2 = write_temp(
      "dense.yaml", "strategy: explicit\nlayers:\n  0: [[0, 1], [2, 3]]\n  1: [[0, 1], [2, 3]]\n");
  spec = load_placement_spec(path2);
  msg = error_of([&] { Placement::build(spec, {false, true}, 4, 2); });
  EXPECT_EQ(msg, path2 + ": key 'layers.0': layer 0 is a dense layer (no experts to place)");
}

TEST(PlacementErrors, MoeLayerWithoutMapAndWithoutDefaultIsNamed) {
  auto path = write_temp("nodefault.yaml", "strategy: explicit\nlayers:\n  1: [[0, 1], [2, 3]]\n");
  PlacementSpec spec = load_placement_spec(path);
  std::string msg = error_of([&] { Placement::build(spec, all_moe(2), 4, 2); });
  EXPECT_NE(msg.find("MoE layer 0 has no map and there is no 'default'"), std::string::npos) << msg;
}

TEST(PlacementErrors, NegativeLayerIndexAndBadRankCountAreRejected) {
  auto path = write_temp("neg.yaml", "strategy: explicit\nlayers:\n  -1: [[0]]\n");
  std::string msg = error_of([&] { load_placement_spec(path); });
  EXPECT_NE(msg.find("a layer index must be a non-negative integer or 'default'"),
            std::string::npos)
      << msg;
  auto path2 = write_temp("zero.yaml", "strategy: contiguous\nranks: 0\n");
  msg = error_of([&] { load_placement_spec(path2); });
  EXPECT_NE(msg.find("key 'ranks': expected a positive number of ranks, got 0"), std::string::npos)
      << msg;
}

TEST(LayerPlacementValidate, DetectsEveryBrokenInvariant) {
  auto good = LayerPlacement::from_rank_experts({{0, 1}, {2, 3, 0}}, 4);
  good.validate(4, 2, "ok");

  EXPECT_NE(error_of([&] {
              good.validate(5, 2, "w");
            }).find("placement has 4 experts but the model has 5"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              good.validate(4, 3, "w");
            }).find("placement is for 2 ranks but the job has 3"),
            std::string::npos);

  auto no_slot = good;
  no_slot.expert_slots[1].clear();
  EXPECT_NE(error_of([&] { no_slot.validate(4, 2, "w"); }).find("expert 1 has no slot"),
            std::string::npos);

  auto bad_rank = good;
  bad_rank.expert_slots[2][0].rank = 7;
  EXPECT_NE(error_of([&] { bad_rank.validate(4, 2, "w"); }).find("placed on rank 7"),
            std::string::npos);

  auto wrong_slot = good;
  wrong_slot.expert_slots[2][0].local_slot = 1;  // slot (1, 1) holds expert 3
  EXPECT_NE(error_of([&] { wrong_slot.validate(4, 2, "w"); }).find("holds expert 3"),
            std::string::npos);

  auto unreferenced = good;
  unreferenced.expert_slots[0].pop_back();  // rank 1 slot 2 is listed but no expert points at it
  EXPECT_NE(error_of([&] { unreferenced.validate(4, 2, "w"); }).find("slots are listed per rank"),
            std::string::npos);

  EXPECT_NE(error_of([&] {
              LayerPlacement::from_rank_experts({{0, 4}}, 4);
            }).find("expert 4"),
            std::string::npos);
}

}  // namespace
}  // namespace moe::parallel
