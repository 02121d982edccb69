// Device graphs and routing on the device, on the GPU (skips without a device): a decode captured
// once per batch shape and replayed gives the tokens the same graph-safe step gives eagerly
// (--graph off: the same kernels, so the same bits), and routing on the device gives the logits of
// routing on the host to within the two expert paths' fp32 summation orders.
#include <gtest/gtest.h>

#include <string>

#include "cli_util.h"
#include "kernels/cuda/cuda_backend.h"

namespace moe::test {
namespace {

const std::string kTiny = source("configs/models/tiny.yaml");
const std::string kTokens = "\"1,2,3,4,5,6,7,8,9;10,11;12,13,14,15,16,17;18;19,20,21,22\"";

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
    auto g = run(moe_ep() + " generate --quiet --backend cuda --routing device --graph " + graph +
                     " --model " + kTiny + " --tokens " + kTokens + " --max-new-tokens 12",
                 300);
    ASSERT_EQ(g.exit_code, 0) << graph << g.err;
    out[i++] = g.out;
  }
  EXPECT_FALSE(out[0].empty());
  EXPECT_EQ(out[0], out[1]);
}

TEST_F(CudaGraph, DeviceRoutingMatchesHostRouting) {
  runtime::NpyArray logits[2];
  int i = 0;
  for (const char* routing : {"host", "device"}) {
    const std::string npy = (dir_ / (std::string(routing) + ".npy")).string();
    auto r = run(moe_ep() + " forward --quiet --backend cuda --comm mpi --routing " + routing +
                     " --model " + kTiny + " --tokens " + kTokens + " --logits-out " + npy,
                 300);
    ASSERT_EQ(r.exit_code, 0) << routing << r.err;
    logits[i++] = runtime::read_npy_f32(npy);
  }
  // Same pairs, same bf16 rounding points; only the expert kernels' fp32 orders differ.
  EXPECT_LE(relative_max_diff(logits[1], logits[0]), 1e-2);
}

TEST_F(CudaGraph, TwoRanksRouteOnTheDeviceAsOnTheHost) {
  runtime::NpyArray logits[2];
  int i = 0;
  for (const char* routing : {"host", "device"}) {
    const std::string npy = (dir_ / (std::string("two_") + routing + ".npy")).string();
    auto r = run(mpirun(2) + " forward --quiet --backend cuda --comm mpi --routing " + routing +
                     " --model " + kTiny + " --tokens " + kTokens + " --logits-out " + npy,
                 300);
    ASSERT_EQ(r.exit_code, 0) << routing << r.err;
    logits[i++] = runtime::read_npy_f32(npy);
  }
  EXPECT_LE(relative_max_diff(logits[1], logits[0]), 1e-2);
}

}  // namespace
}  // namespace moe::test
