// `moe-ep serve` under mpirun with 2 ranks: SIGTERM to rank 0 (the process serving HTTP) ends
// every rank with exit 0 after the running stream is answered (mpirun itself aborts the job on
// SIGTERM: SIGTERM to every rank, SIGKILL a second later); a rank killed mid-stream gets the open
// request a 503 event, and the job ends with one line naming the rank; a run config's rebalance:
// block and --trace-out work while serving.
#include "tests/serve/serve_util.h"

namespace moe::test {
namespace {

const std::string kStream = R"({"prompt":"Hello there","max_tokens":3000,"stream":true})";

// Two ranks serving the tiny chat model, a long stream running (its first chunk received).
class ServeTwoRanks : public ::testing::Test {
 protected:
  void SetUp() override {
    // Not --quiet: mpirun's line naming a dead rank is what the user sees.
    const std::string launcher = std::string(MOE_MPIRUN) +
                                 " --allow-run-as-root --oversubscribe -np 2 -x " +
                                 "OPENBLAS_NUM_THREADS=1 " + MOE_EP_EXE;
    server_ =
        std::make_unique<ServerProcess>(launcher,
                                        "--model " + chat_model_yaml(dir_) + " --tokenizer " +
                                            kQwenTokenizer + " --max-model-len 4096 --grace-s 1",
                                        dir_);
    ASSERT_GT(server_->port(), 0) << server_->log();
    stream_ = std::make_unique<RawConnection>(server_->port());
    ASSERT_TRUE(stream_->post(kStream));
    ASSERT_NE(stream_->read_until("text_completion", 30).find("text_completion"),
              std::string::npos);
  }
  // Sends `sig` to rank `rank`; returns what the stream received until it ended (or 30 s).
  const std::string& signal_rank(int rank, int sig) {
    const pid_t pid = server_->rank_pid(rank);
    EXPECT_GT(pid, 0) << "no process of rank " << rank;
    if (pid > 0) {
      EXPECT_EQ(kill(pid, sig), 0);
    }
    return stream_->read_until("data: [DONE]", 30);
  }
  fs::path dir_ = temp_dir("serve_2ranks");
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<RawConnection> stream_;
};

TEST_F(ServeTwoRanks, SigtermToRankZeroEndsEveryRankWithExitZero) {
  const std::string& got = signal_rank(0, SIGTERM);
  EXPECT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(got.size() - 300);
  EXPECT_EQ(server_->wait_exit(60), 0) << server_->log();
}

TEST_F(ServeTwoRanks, AKilledRankAnswersTheOpenStream503AndEndsTheJobNamingIt) {
  const std::string& got = signal_rank(1, SIGKILL);
  ASSERT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(got.size() - 300);
  EXPECT_NE(got.find("\"code\":503"), std::string::npos) << got.substr(got.size() - 300);
  EXPECT_NE(got.find("a rank died or hangs"), std::string::npos) << got.substr(got.size() - 300);
  const int code = server_->wait_exit(60);
  EXPECT_GT(code, 0) << "the job did not end, or ended with 0: " << server_->log();
  int naming = 0;
  std::istringstream err(server_->log());
  for (std::string line; std::getline(err, line);) {
    if (line.find("rank 1") != std::string::npos) ++naming;
  }
  EXPECT_EQ(naming, 1) << server_->log();
}

// A run config's rebalance: block refits the placement on served traffic, and --trace-out records
// every served token's routing (prompt tokens and every generated token but the last).
TEST(ServeRebalance, TheRebalanceBlockAndTheTraceWorkWhileServing) {
  const fs::path dir = temp_dir("serve_rebalance");
  const std::string json_out = (dir / "serve.json").string();
  ServerProcess s(mpirun(2),
                  "--config " + source("configs/bench/tiny_rebalance.yaml") + " --tokenizer " +
                      kQwenTokenizer + " --trace-out " + (dir / "trace.safetensors").string() +
                      " --json " + json_out,
                  dir);
  ASSERT_GT(s.port(), 0) << s.log();
  for (int i = 0; i < 4; ++i) {
    const Reply r = post(s, "/v1/completions",
                         R"({"prompt":[1,2,3,)" + std::to_string(10 + i) + R"(],"max_tokens":6})");
    ASSERT_EQ(r.status, 200) << r.body.dump();
    EXPECT_EQ(r.body["usage"]["completion_tokens"], 6);
  }
  const pid_t rank0 = s.rank_pid(0);
  ASSERT_GT(rank0, 0);
  ASSERT_EQ(kill(rank0, SIGTERM), 0);
  ASSERT_EQ(s.wait_exit(60), 0) << s.log();
  EXPECT_NE(s.log().find("wrote routing trace (36 tokens x 3 MoE layers"), std::string::npos)
      << s.log();
  const json j = json::parse(read_text(json_out));
  ASSERT_TRUE(j.contains("rebalance")) << j.dump();
  EXPECT_GE(j["rebalance"]["events"].size(), 2u) << j["rebalance"].dump();
}

}  // namespace
}  // namespace moe::test
