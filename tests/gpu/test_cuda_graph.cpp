// Device graphs on the GPU (skips without a device): a decode captured once per batch shape and
// replayed gives the tokens the same graph-safe step gives eagerly (--graph off: the same kernels,
// so the same bits); a model the graph cannot take runs eagerly; two ranks give one rank's logits.
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "cli_util.h"
#include "kernels/cuda/cuda_backend.h"

namespace moe::test {
namespace {

class CudaGraph : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    dir_ = temp_dir("cuda_graph");
  }
  std::filesystem::path dir_;
};

TEST_F(CudaGraph, ReplayedDecodeGivesTheEagerTokens) {
  // 12 decode steps of 5 sequences: step 2 runs eagerly (first of its shape), step 3 is captured,
  // the rest replay. --graph off runs the same graph-safe step eagerly every time.
  std::string out[2];
  int i = 0;
  for (const char* graph : {"off", "on"}) {
    auto g = run(moe_ep() + " generate --quiet --backend cuda --graph " + graph + " --model " +
                     kTiny + " --tokens " + kFiveSequences + " --max-new-tokens 12",
                 300);
    ASSERT_EQ(g.exit_code, 0) << graph << g.err;
    out[i++] = g.out;
  }
  EXPECT_FALSE(out[0].empty());
  EXPECT_EQ(out[0], out[1]);
}

// A model whose expert width is not a multiple of 8 cannot run its experts on device-only counts
// (the small-expert kernel's shape rule), so its decode is not captured: it runs eagerly with
// --graph on and gives the --graph off tokens instead of failing during capture.
TEST_F(CudaGraph, ExpertWidthsTheGraphCannotTakeRunEagerly) {
  const std::string model = (dir_ / "tiny_inter36.yaml").string();
  {
    std::string yaml = read_text(kTiny);
    const std::string key = "moe_intermediate_size: 32";
    ASSERT_NE(yaml.find(key), std::string::npos);
    yaml.replace(yaml.find(key), key.size(), "moe_intermediate_size: 36");
    std::ofstream(model) << yaml;
  }
  std::string out[2];
  int i = 0;
  for (const char* graph : {"off", "on"}) {
    auto g = run(moe_ep() + " generate --quiet --backend cuda --graph " + graph + " --model " +
                     model + " --tokens " + kFiveSequences + " --max-new-tokens 6",
                 300);
    ASSERT_EQ(g.exit_code, 0) << graph << g.err;
    out[i++] = g.out;
  }
  EXPECT_FALSE(out[0].empty());
  EXPECT_EQ(out[0], out[1]);
}

// Two ranks sharing the GPU (--comm mpi stages the exchange through host memory) give the one-rank
// logits up to bf16 rounding of differently shaped GEMMs.
TEST_F(CudaGraph, TwoRanksGiveTheOneRankLogits) {
  runtime::NpyArray logits[2];
  int i = 0;
  for (int ranks : {1, 2}) {
    const std::string npy = (dir_ / ("ranks" + std::to_string(ranks) + ".npy")).string();
    auto r = run(mpirun(ranks) + " forward --quiet --backend cuda --comm mpi --model " + kTiny +
                     " --tokens " + kFiveSequences + " --logits-out " + npy,
                 300);
    ASSERT_EQ(r.exit_code, 0) << ranks << r.err;
    logits[i++] = runtime::read_npy_f32(npy);
  }
  EXPECT_LE(relative_max_diff(logits[1], logits[0]), 1e-2);
}

}  // namespace
}  // namespace moe::test
