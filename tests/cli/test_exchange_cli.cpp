// The exchange's settings end to end under mpirun: --overlap on gives the logits of off (bit for
// bit where a row's arithmetic does not depend on the rows beside it: bf16 compute; within the
// rank-count tolerance in fp32, whose BLAS sums a row by the rows sharing its call), and run
// --json counts the collectives of every MoE layer and the bytes of the rows in the wire type.
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli_util.h"

namespace moe::test {
namespace {

bool same_bits(const runtime::NpyArray& a, const runtime::NpyArray& b) {
  return a.shape == b.shape && a.data.size() == b.data.size() &&
         std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0;
}

class ExchangeCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = temp_dir("exchange_cli"); }
  // forward's logits of the five sequences on n ranks with `args`.
  static runtime::NpyArray logits(int n, const std::string& args, const std::string& label) {
    const std::string npy = (dir_ / (label + ".npy")).string();
    auto f = run(tiny_command(n == 1 ? moe_ep() : mpirun(n), "forward", kFiveSequences) + " " +
                 args + " --logits-out " + npy);
    EXPECT_EQ(f.exit_code, 0) << label << f.err;
    return runtime::read_npy_f32(npy);
  }
  static nlohmann::json run_json(int n, const std::string& args, const std::string& label) {
    const std::string json = (dir_ / (label + ".json")).string();
    auto r = run(mpirun(n) + " run --quiet --config " + source("configs/bench/tiny.yaml") + " " +
                 args + " --json " + json);
    EXPECT_EQ(r.exit_code, 0) << label << r.err;
    return nlohmann::json::parse(read_text(json))["metrics"];
  }
  static inline std::filesystem::path dir_;
};

TEST_F(ExchangeCli, OverlapGivesTheLogitsOfOffOn2And4Ranks) {
  for (int n : {2, 4}) {
    const std::string ranks = std::to_string(n);
    // On 4 ranks, ranks 1-3 hold one sequence: their second micro-batch is empty.
    EXPECT_TRUE(same_bits(logits(n, "--compute-dtype bf16 --overlap on", "bf16_on_" + ranks),
                          logits(n, "--compute-dtype bf16 --overlap off", "bf16_off_" + ranks)))
        << n << " ranks, bf16";
    EXPECT_TRUE(same_bits(
        logits(n, "--compute-dtype bf16 --dispatch-dtype fp8 --overlap on", "f8_" + ranks),
        logits(n, "--compute-dtype bf16 --dispatch-dtype fp8", "f8_off_" + ranks)))
        << n << " ranks, fp8 dispatch";
    const double rel = relative_max_diff(logits(n, "--overlap on", "fp32_on_" + ranks),
                                         logits(n, "--overlap off", "fp32_off_" + ranks));
    EXPECT_LE(rel, 1e-5) << n << " ranks, fp32";
    auto on = run(tiny_command(mpirun(n), "generate", kFiveSequences) +
                  " --overlap on --max-new-tokens 4");
    auto off = run(tiny_command(mpirun(n), "generate", kFiveSequences) + " --max-new-tokens 4");
    ASSERT_EQ(on.exit_code, 0) << on.err;
    EXPECT_EQ(on.out, off.out) << n << " ranks";
  }
}

TEST_F(ExchangeCli, OverlapOnOneRankRunsOneBatch) {
  EXPECT_TRUE(same_bits(logits(1, "--overlap on", "one_on"), logits(1, "", "one_off")));
}

TEST_F(ExchangeCli, RunJsonCountsCollectivesAndHalvesBytesWithBf16Rows) {
  const nlohmann::json f32 = run_json(2, "", "f32");
  const nlohmann::json f32_rows = run_json(2, "--compute-dtype bf16 --dispatch-dtype fp32", "f32r");
  const nlohmann::json b16 = run_json(2, "--compute-dtype bf16", "b16");
  const nlohmann::json over = run_json(2, "--compute-dtype bf16 --overlap on", "over");
  for (const auto* m : {&f32, &f32_rows, &b16}) {
    // One message each way; prefill may add a spill exchange (a message over its capacity).
    EXPECT_EQ((*m)["traffic"]["max_collectives_per_layer"]["decode"].get<int64_t>(), 2);
    EXPECT_LE((*m)["traffic"]["max_collectives_per_layer"]["prefill"].get<int64_t>(), 3);
    for (const auto& l : (*m)["layers"]) {
      // Layer entries are totals over the run's steps of that phase, with the most in one step.
      const int64_t steps = l["steps"].get<int64_t>();
      EXPECT_GE(l["collectives"].get<int64_t>(), 2 * steps);
      EXPECT_LE(l["max_collectives_per_step"].get<int64_t>(), l["phase"] == "decode" ? 2 : 3);
      EXPECT_GE(l["max_collectives_per_step"].get<int64_t>(), 2);
    }
  }
  // Two micro-batches: one dispatch and one combine each.
  EXPECT_EQ(over["traffic"]["max_collectives_per_layer"]["decode"].get<int64_t>(), 4);
  // Same compute, same routing: bf16 rows are half the bytes of fp32 rows.
  const auto row_bytes = [](const nlohmann::json& m) {
    return m["traffic"]["row_bytes_sent_remote"].get<int64_t>();
  };
  const auto rows = [](const nlohmann::json& m) {
    return m["traffic"]["rows_sent_remote"].get<int64_t>();
  };
  ASSERT_GT(row_bytes(b16), 0);
  EXPECT_EQ(rows(b16), rows(f32_rows));
  EXPECT_EQ(2 * row_bytes(b16), row_bytes(f32_rows));
  // fp32 against bf16 compute: the routing may differ, a row's bytes halve (hidden 64).
  EXPECT_EQ(row_bytes(f32), rows(f32) * 2 * 64 * 4);
  EXPECT_EQ(row_bytes(b16), rows(b16) * 2 * 64 * 2);
}

}  // namespace
}  // namespace moe::test
