// GPU-vs-CPU and GPU-vs-transformers logits that cannot fail on a legitimate routing flip: the
// worker (cuda_routing_worker.cpp) runs the model on the CPU backend, then on the GPU twice, once
// with its own routing (free) and once with the CPU run's top-k replayed through a RoutingHook
// (forced). The forced run is held to the bf16 tolerance and confident-argmax agreement; the free
// run's top-1 agreement and the share of positions whose routing agreed are printed and recorded
// (bf16 rounding may flip a near-tie in a router, which moves that token's logits far more than
// the rounding itself). Skips without a CUDA device, except the rehearsal of the worker on the
// CPU backend's bf16 mode.
#include <gtest/gtest.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_util.h"
#include "hf_fixture.h"
#include "kernels/cuda/cuda_backend.h"
#include "logit_compare.h"

namespace moe::test {
namespace {

const std::string kTiny = source("configs/models/tiny.yaml");

struct WorkerRun {
  std::filesystem::path dir;
  int64_t positions = 0, routing_agreeing = 0;
  runtime::NpyArray get(const char* name, size_t i) const {
    return runtime::read_npy_f32(
        (dir / (std::string(name) + "_" + std::to_string(i) + ".npy")).string());
  }
};

WorkerRun run_worker(const std::string& model, const std::string& tokens, const std::string& tag,
                     const std::string& device = "cuda") {
  WorkerRun w;
  w.dir = temp_dir("cuda_routing_" + tag);
  const auto r = run(std::string(MOE_CUDA_ROUTING_WORKER) + " --model " + model + " --tokens \"" +
                         tokens + "\" --device " + device + " --out " + w.dir.string(),
                     300);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code == 0) {
    const auto j = nlohmann::json::parse(read_text(w.dir / "routing.json"));
    w.positions = j.at("positions").get<int64_t>();
    w.routing_agreeing = j.at("routing_agreeing_positions").get<int64_t>();
  }
  return w;
}

// Unforced figures over all prompts of one model.
struct FreeRunReport {
  double top1_sum = 0;
  int64_t prompts = 0;
  void print(const std::string& what, const WorkerRun& w) const {
    std::cout << "[ routing  ] " << what << ": free GPU run, top-1 agrees with the reference at "
              << 100.0 * top1_sum / std::max<int64_t>(prompts, 1) << "% of positions (mean over "
              << prompts << " prompts); routing agreed at " << w.routing_agreeing << " of "
              << w.positions << " positions\n";
    ::testing::Test::RecordProperty(what + "_free_top1_agreement",
                                    std::to_string(top1_sum / std::max<int64_t>(prompts, 1)));
  }
};

class CudaRouting : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible";
  }
};

// The worker's record/replay on a machine without a GPU: the CPU backend's bf16 mode stands in
// for the GPU (same roundings, kernels/common/rounding.h), so the forced comparison is exercised
// in every build and must hold the same tolerance.
TEST(CudaRoutingRehearsal, ForcedRoutingOnCpuBf16MatchesFp32WithinBf16) {
  const Fixture f = load_fixture("moe128");
  const WorkerRun w = run_worker(f.dir, f.tokens_arg, "rehearsal", "cpu-bf16");
  ASSERT_GT(w.positions, 0);
  for (size_t i = 0; i < f.prompts.size(); ++i) {
    const auto cpu = w.get("cpu", i), forced = w.get("gpu_forced", i);
    EXPECT_LE(relative_max_diff(forced, cpu), kBf16LogitRelTol) << "prompt " << i;
    const ArgmaxAgreement a = confident_argmax(forced, cpu);
    EXPECT_EQ(a.agreeing_rows, a.confident_rows) << "prompt " << i;
  }
  EXPECT_LE(w.routing_agreeing, w.positions);
}

TEST_F(CudaRouting, TinyForcedRoutingMatchesCpuWithinBf16) {
  const std::string tokens = "1,2,3,4,5,6,7,8,9;10,11;12,13,14,15,16,17;18;19,20,21,22";
  const WorkerRun w = run_worker(kTiny, tokens, "tiny");
  ASSERT_GT(w.positions, 0);
  FreeRunReport free_run;
  int64_t confident = 0;
  for (size_t i = 0; i < 5; ++i) {
    const auto cpu = w.get("cpu", i), forced = w.get("gpu_forced", i), free = w.get("gpu_free", i);
    EXPECT_LE(relative_max_diff(forced, cpu), kBf16LogitRelTol) << "sequence " << i;
    const ArgmaxAgreement a = confident_argmax(forced, cpu);
    EXPECT_EQ(a.agreeing_rows, a.confident_rows) << "sequence " << i;
    confident += a.confident_rows;
    free_run.top1_sum += top1_agreement(free, cpu);
    ++free_run.prompts;
  }
  EXPECT_GT(confident, 0);
  free_run.print("tiny", w);
}

TEST_F(CudaRouting, HfFixturesForcedToCpuRoutingMatchTransformersWithinBf16) {
  // The CPU run matches transformers to 1e-5 (tests/hf), so its routing is transformers'.
  for (const std::string& name : kFixtures) {
    const Fixture f = load_fixture(name);
    const WorkerRun w = run_worker(f.dir, f.tokens_arg, name);
    ASSERT_GT(w.positions, 0) << name;
    FreeRunReport free_run;
    int64_t confident = 0;
    for (size_t i = 0; i < f.prompts.size(); ++i) {
      const auto hf = runtime::read_npy_f32(f.dir + "/logits_" + std::to_string(i) + ".npy");
      const auto forced = w.get("gpu_forced", i), free = w.get("gpu_free", i);
      EXPECT_LE(relative_max_diff(forced, hf), kBf16LogitRelTol) << name << " prompt " << i;
      const ArgmaxAgreement a = confident_argmax(forced, hf);
      EXPECT_EQ(a.agreeing_rows, a.confident_rows) << name << " prompt " << i;
      confident += a.confident_rows;
      free_run.top1_sum += top1_agreement(free, hf);
      ++free_run.prompts;
    }
    EXPECT_GT(confident, 0) << name;
    free_run.print(name, w);
  }
}

}  // namespace
}  // namespace moe::test
