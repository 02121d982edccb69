// Placements fitted by `moe-ep place` (every strategy, replicas and the hierarchical variant
// included) run under mpirun and give the one-rank logits (max |diff| / max |ref| <= 1e-5):
// replicas hold identical weights, so the split rule changes only fp32 summation order.
#include "cli_util.h"
#include "runtime/io/config.h"
#include "runtime/io/trace.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::test {
namespace {

const std::string kTiny = source("configs/models/tiny.yaml");
// 5 sequences: on 4 ranks rank 0 holds two, the others one.
const std::string kTokens = "\"1,2,3,4,5,6,7,8,9;10,11;12,13,14,15,16,17;18;19,20,21,22\"";

TEST(PlacementMultiRank, EveryFittedStrategyMatchesOneRankLogits) {
  auto dir = temp_dir("placement_multirank");
  runtime::RoutingSpec spec;
  spec.kind = "zipf";
  spec.s = 1.5;
  const std::string trace = (dir / "zipf.safetensors").string();
  runtime::write_trace(trace,
                       runtime::generate_trace(spec, runtime::load_model_config(kTiny), 1024));
  const std::string ref = (dir / "ref.npy").string();
  auto f = run(moe_ep() + " forward --quiet --model " + kTiny + " --tokens " + kTokens +
               " --logits-out " + ref);
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
    auto g = run(mpirun(c.ranks) + " forward --quiet --model " + kTiny + " --tokens " + kTokens +
                 " --placement " + yaml + " --logits-out " + npy);
    ASSERT_EQ(g.exit_code, 0) << c.args << g.err;
    EXPECT_LE(relative_max_diff(runtime::read_npy_f32(npy), runtime::read_npy_f32(ref)), 1e-5)
        << c.args;
  }
}

}  // namespace
}  // namespace moe::test
