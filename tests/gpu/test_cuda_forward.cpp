// The whole model on the GPU (`moe-ep --backend cuda`) against the CPU backend and against
// transformers' own logits: tiny model and every HF fixture, one rank and two ranks sharing the
// GPU (--comm mpi), NCCL where two GPUs exist; decode through the bf16 KV cache against a full
// re-run. Skips without a CUDA device.
//
// Tolerances: weights are bf16 on both backends; the GPU also rounds GEMM inputs to bf16 and
// keeps the KV cache in bf16, so logits move by a few parts in 2^8 of their range. Greedy choices
// are compared only where the reference is confident: top-1 beats top-2 by more than twice the
// largest logit difference actually measured between the two runs, so a near-tie cannot flip the
// test while a wrong kernel (differences comparable to the logits themselves) still fails it.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.h"
#include "hf_fixture.h"
#include "kernels/cuda/cuda_backend.h"

namespace moe::test {
namespace {

constexpr double kBf16LogitRelTol = 3e-2;  // max |diff| / max |reference|
const std::string kTiny = source("configs/models/tiny.yaml");
const std::string kTinyTokens = "\"1,2,3,4,5,6,7,8,9;10,11;12,13,14,15,16,17;18;19,20,21,22\"";

struct ArgmaxAgreement {
  int64_t confident_rows = 0;
  int64_t agreeing_rows = 0;
};

// A logit row's argmax and by how much it beats the runner-up.
struct Top1 {
  int64_t id = 0;
  double value = 0;
  double margin = 0;
};
Top1 top1(const float* row, int64_t V) {
  Top1 t;
  for (int64_t v = 1; v < V; ++v) {
    if (row[v] > row[t.id]) t.id = v;
  }
  double second = -1e300;
  for (int64_t v = 0; v < V; ++v) {
    if (v != t.id) second = std::max(second, double(row[v]));
  }
  t.value = row[t.id];
  t.margin = t.value - second;
  return t;
}

// Over rows [rows, V] of two logit arrays: rows where `want`'s top-1 margin exceeds twice the
// largest |got - want| of the row, and how many of those have the same argmax in `got`.
ArgmaxAgreement confident_argmax(const runtime::NpyArray& got, const runtime::NpyArray& want) {
  ArgmaxAgreement a;
  const int64_t V = want.shape.back();
  const int64_t rows = static_cast<int64_t>(want.data.size()) / V;
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = got.data.data() + r * V;
    const float* w = want.data.data() + r * V;
    if (std::isnan(w[0])) continue;  // padding row of a shorter sequence
    double max_diff = 0;
    for (int64_t v = 0; v < V; ++v) max_diff = std::max(max_diff, std::abs(double(g[v]) - w[v]));
    const Top1 t = top1(w, V);
    if (t.margin <= 2 * max_diff) continue;
    ++a.confident_rows;
    a.agreeing_rows += top1(g, V).id == t.id ? 1 : 0;
  }
  return a;
}

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

TEST_F(CudaForward, TinyLogitsMatchCpuWithinBf16AndConfidentArgmaxAgrees) {
  const auto cpu = forward(moe_ep(), "--backend cpu", kTiny, kTinyTokens);
  const auto gpu = forward(moe_ep(), kCuda, kTiny, kTinyTokens);
  ASSERT_FALSE(cpu.data.empty());
  ASSERT_FALSE(gpu.data.empty());
  EXPECT_LE(relative_max_diff(gpu, cpu), kBf16LogitRelTol);
  const ArgmaxAgreement a = confident_argmax(gpu, cpu);
  EXPECT_GT(a.confident_rows, 0);
  EXPECT_EQ(a.agreeing_rows, a.confident_rows);
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

TEST_F(CudaForward, HfFixturesMatchTransformersWithinBf16) {
  for (const std::string& name : kFixtures) {
    const Fixture f = load_fixture(name);
    const auto gpu = forward(moe_ep(), kCuda, f.dir, "\"" + f.tokens_arg + "\"");
    ASSERT_FALSE(gpu.data.empty()) << name;
    int64_t confident = 0;
    for (size_t i = 0; i < f.prompts.size(); ++i) {
      const auto ref = runtime::read_npy_f32(f.dir + "/logits_" + std::to_string(i) + ".npy");
      const auto mine = sequence_rows(gpu, i, static_cast<int64_t>(f.prompts[i].size()));
      EXPECT_LE(relative_max_diff(mine, ref), kBf16LogitRelTol) << name << " prompt " << i;
      const ArgmaxAgreement a = confident_argmax(mine, ref);
      EXPECT_EQ(a.agreeing_rows, a.confident_rows) << name << " prompt " << i;
      confident += a.confident_rows;
    }
    EXPECT_GT(confident, 0) << name;
  }
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
