// The whole model through the moe-ep executable on the GPU: the default one-GPU path (`--backend
// cuda`, NCCL on one rank), two ranks sharing the GPU (--comm mpi) against one, NCCL where two
// GPUs exist, and decode through the bf16 KV cache against a full re-run. GPU-vs-CPU and
// GPU-vs-transformers logits are compared with the routing forced equal in test_cuda_routing.cpp.
// Skips without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "hf_fixture.h"
#include "kernels/cuda/cuda_backend.h"
#include "logit_compare.h"

namespace moe::test {
namespace {

const std::string kTiny = source("configs/models/tiny.yaml");
const std::string kTinyTokens = "\"1,2,3,4,5,6,7,8,9;10,11;12,13,14,15,16,17;18;19,20,21,22\"";

class CudaForward : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
    dir_ = temp_dir("cuda_forward");
  }
  // forward with `launcher` (moe-ep or mpirun ... moe-ep) and extra flags; returns the logits.
  runtime::NpyArray forward(const std::string& launcher, const std::string& flags,
                            const std::string& model, const std::string& tokens) {
    const auto npy = (dir_ / ("f" + std::to_string(counter_++) + ".npy")).string();
    auto r = run(launcher + " forward --quiet " + flags + " --model " + model + " --tokens " +
                     tokens + " --logits-out " + npy,
                 300);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code == 0 ? runtime::read_npy_f32(npy) : runtime::NpyArray{};
  }
  std::filesystem::path dir_;
  int counter_ = 0;
};

const std::string kCuda = "--backend cuda --comm mpi";

TEST_F(CudaForward, DefaultOneGpuPathUsesNcclAndMatchesMpi) {
  // `--backend cuda` alone takes the NCCL default; on one rank every row is the rank's own, so
  // nothing crosses the communicator and the logits equal the --comm mpi run's (same kernels on
  // the same shapes; the bound leaves room only for a nondeterministic GEMM algorithm).
  const auto nccl = forward(moe_ep(), "--backend cuda", kTiny, kTinyTokens);
  const auto mpi = forward(moe_ep(), kCuda, kTiny, kTinyTokens);
  ASSERT_FALSE(nccl.data.empty());
  ASSERT_FALSE(mpi.data.empty());
  EXPECT_LE(relative_max_diff(nccl, mpi), 1e-6);
}

TEST_F(CudaForward, TwoRanksSharingTheGpuMatchOneRank) {
  // Same kernels on both sides; only the experts' grouping into GEMMs and the exchange differ.
  const auto one = forward(moe_ep(), kCuda, kTiny, kTinyTokens);
  const auto two = forward(mpirun(2), kCuda, kTiny, kTinyTokens);
  ASSERT_FALSE(one.data.empty());
  ASSERT_FALSE(two.data.empty());
  EXPECT_LE(relative_max_diff(two, one), 1e-3);
}

TEST_F(CudaForward, NcclTwoRanksMatchOneRank) {
  // NCCL needs one GPU per rank (two ranks on one device is an NCCL error by design).
  if (kernels::cuda_device_count() < 2) GTEST_SKIP() << "NCCL test needs two GPUs";
  const auto one = forward(moe_ep(), kCuda, kTiny, kTinyTokens);
  const auto two = forward(mpirun(2), "--backend cuda --comm nccl", kTiny, kTinyTokens);
  ASSERT_FALSE(two.data.empty());
  EXPECT_LE(relative_max_diff(two, one), 1e-3);
}

TEST_F(CudaForward, DecodeThroughTheBf16CacheMatchesAFullReRun) {
  // Greedy tokens from the cached decode path; then one forward over prompt + those tokens must
  // pick the same token at every confident step (no cache involved there).
  const std::vector<int> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  std::string prompt_arg;
  for (size_t i = 0; i < prompt.size(); ++i)
    prompt_arg += (i ? "," : "") + std::to_string(prompt[i]);
  auto g = run(moe_ep() + " generate --quiet " + kCuda + " --model " + kTiny + " --tokens " +
                   prompt_arg + " --max-new-tokens 12",
               300);
  ASSERT_EQ(g.exit_code, 0) << g.err;
  std::vector<int> generated;
  std::stringstream line(g.out.substr(0, g.out.find('\n')));
  for (std::string tok; std::getline(line, tok, ',');) generated.push_back(std::stoi(tok));
  ASSERT_EQ(generated.size(), 12u) << g.out;

  std::string full_arg = prompt_arg;
  for (int t : generated) full_arg += "," + std::to_string(t);
  const auto full = forward(moe_ep(), kCuda, kTiny, "\"" + full_arg + "\"");
  ASSERT_FALSE(full.data.empty());
  const int64_t V = full.shape[2];
  int64_t checked = 0;
  for (size_t i = 0; i < generated.size(); ++i) {
    const Top1 t = top1(full.data.data() + (prompt.size() - 1 + i) * V, V);
    // Near tie: bf16 rounding may decide it either way.
    if (t.margin < 1e-2 * std::max(1.0, std::abs(t.value))) continue;
    ++checked;
    EXPECT_EQ(t.id, generated[i]) << "step " << i;
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace moe::test
