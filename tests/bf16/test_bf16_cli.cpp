// --compute-dtype through the moe-ep executable: bad values are usage errors (flag and run
// config), bf16 changes the logits of `forward` but not its top-1 on the HF fixtures, the same
// bf16 logits on 1, 2 and 4 ranks, and `run` reports the compute dtype it ran.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_util.h"
#include "hf_fixture.h"

namespace moe::test {
namespace {

std::string launcher(int n) {
  return n == 1 ? moe_ep() : mpirun(n, "-x OMP_NUM_THREADS=1");
}

runtime::NpyArray forward(const Fixture& f, const std::string& dtype, int ranks,
                          const std::string& extra = "") {
  const auto dir =
      temp_dir("bf16cli_" + dtype + "_" + std::to_string(ranks) + (extra.empty() ? "" : "_x"));
  const auto npy = (dir / "logits.npy").string();
  const auto r =
      run(launcher(ranks) + " forward --quiet --compute-dtype " + dtype + " --model " + f.dir +
          " --tokens \"" + f.tokens_arg + "\" --logits-out " + npy + " " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code != 0) return {};
  return runtime::read_npy_f32(npy);
}

TEST(Bf16Cli, BadComputeDtypeIsAUsageErrorNamingTheChoices) {
  const auto r = run(moe_ep() + " forward --compute-dtype fp16 --model " +
                     source("configs/models/tiny.yaml") + " --tokens 1,2 --logits-out x.npy");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  const std::string all = r.out + r.err;
  EXPECT_NE(all.find("fp32 | bf16"), std::string::npos) << all;
  EXPECT_NE(all.find("'fp16'"), std::string::npos) << all;
}

TEST(Bf16Cli, BadComputeDtypeInARunConfigNamesKeyAndValue) {
  const auto r = run(moe_ep() + " run --quiet --config " + source("configs/bench/tiny.yaml") +
                     " --set compute_dtype=int8");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("compute_dtype"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("'int8' is not fp32 or bf16"), std::string::npos) << r.err;
}

TEST(Bf16Cli, CudaRefusesFp32) {
  const auto r = run(moe_ep() + " forward --backend cuda --comm mpi --compute-dtype fp32 --model " +
                     source("configs/models/tiny.yaml") + " --tokens 1,2 --logits-out x.npy");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("bf16 only"), std::string::npos) << r.err;
}

TEST(Bf16Cli, Bf16ForwardDiffersFromFp32ButKeepsTop1) {
  const Fixture f = load_fixture("moe128");
  const auto fp32 = forward(f, "fp32", 1);
  const auto bf16 = forward(f, "bf16", 1);
  ASSERT_EQ(fp32.shape, bf16.shape);
  ASSERT_EQ(fp32.shape.size(), 3u);
  EXPECT_NE(fp32.data, bf16.data);  // the flag reaches the backend
  const int64_t V = fp32.shape[2];
  int64_t same = 0, total = 0;
  for (size_t i = 0; i < f.prompts.size(); ++i) {
    for (size_t t = 0; t < f.prompts[i].size(); ++t) {
      const float* a = fp32.data.data() + (i * fp32.shape[1] + t) * V;
      const float* b = bf16.data.data() + (i * fp32.shape[1] + t) * V;
      same += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
      ++total;
    }
  }
  EXPECT_EQ(same, total);
}

// With fp32 rows on the wire, moe128's bf16 logits are bit-identical on 1, 2 and 4 ranks
// (tests/bf16/test_bf16_model.cpp explains why that is not guaranteed for every model); 1e-5 as
// for fp32 in test_multirank. With bf16 rows (the default) each remote partial sum is rounded
// to bf16 and a rank's own are not, so the logits follow the rank count (docs/numerics.md): on
// moe128 about 1e-2 of the largest logit, the top-1 token the same at every position.
TEST(Bf16Cli, SameBf16LogitsOnOneTwoAndFourRanks) {
  const Fixture f = load_fixture("moe128");
  const auto one = forward(f, "bf16", 1);
  for (int ranks : {2, 4}) {
    const auto many = forward(f, "bf16", ranks, "--dispatch-dtype fp32");
    EXPECT_LE(relative_max_diff(many, one), 1e-5) << ranks << " ranks";
    const auto bf16_rows = forward(f, "bf16", ranks);
    EXPECT_LE(relative_max_diff(bf16_rows, one), 3e-2) << ranks << " ranks, bf16 rows";
    const int64_t V = one.shape[2];
    for (size_t row = 0; row * V < one.data.size(); ++row) {
      const float* a = one.data.data() + row * V;
      const float* b = bf16_rows.data.data() + row * V;
      if (std::isnan(a[0])) continue;
      EXPECT_EQ(std::max_element(a, a + V) - a, std::max_element(b, b + V) - b)
          << ranks << " ranks, row " << row;
    }
  }
}

TEST(Bf16Cli, RunReportsItsComputeDtype) {
  const auto dir = temp_dir("bf16cli_run");
  const auto json = (dir / "run.json").string();
  const auto r = run(moe_ep() + " run --quiet --config " + source("configs/bench/tiny.yaml") +
                     " --set compute_dtype=bf16 --set workload.decode_steps=2 --json " + json);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("(bf16 compute)"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(read_text(json));
  EXPECT_EQ(j["compute_dtype"], "bf16");
  // The flag wins over the config.
  const auto r2 = run(moe_ep() + " run --quiet --compute-dtype fp32 --config " +
                      source("configs/bench/tiny.yaml") +
                      " --set compute_dtype=bf16 --set workload.decode_steps=2 --json " + json);
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(nlohmann::json::parse(read_text(json))["compute_dtype"], "fp32");
}

}  // namespace
}  // namespace moe::test
