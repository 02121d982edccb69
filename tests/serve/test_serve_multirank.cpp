// `moe-ep serve` under mpirun with 2 ranks: SIGTERM to rank 0 (the process serving HTTP) ends
// every rank with exit 0 after the running stream is answered (mpirun itself aborts the job on
// SIGTERM: SIGTERM to every rank, SIGKILL a second later); a rank killed mid-stream gets the open
// request a 503 event, and the job ends with one line naming the rank.
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
  fs::path dir_ = temp_dir("serve_2ranks");
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<RawConnection> stream_;
};

TEST_F(ServeTwoRanks, SigtermToRankZeroEndsEveryRankWithExitZero) {
  const pid_t rank0 = server_->rank_pid(0);
  ASSERT_GT(rank0, 0);
  ASSERT_EQ(kill(rank0, SIGTERM), 0);
  const std::string& got = stream_->read_until("data: [DONE]", 30);
  EXPECT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(got.size() - 300);
  EXPECT_EQ(server_->wait_exit(60), 0) << server_->log();
}

TEST_F(ServeTwoRanks, AKilledRankAnswersTheOpenStream503AndEndsTheJobNamingIt) {
  const pid_t victim = server_->rank_pid(1);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const std::string& got = stream_->read_until("data: [DONE]", 30);
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

}  // namespace
}  // namespace moe::test
