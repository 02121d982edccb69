// `moe-ep serve` under mpirun with 2 ranks: SIGTERM to rank 0 (the process serving HTTP) ends
// every rank with exit 0 after the running stream is answered (mpirun itself aborts the job on
// SIGTERM: SIGTERM to every rank, SIGKILL a second later); a rank killed mid-stream gets the open request a 503
// event, and the job ends with one line naming the rank.
#include "tests/serve/serve_util.h"

namespace moe::test {
namespace {

const std::string kStream = R"({"prompt":"Hello there","max_tokens":3000,"stream":true})";

std::string two_rank_server() {
  // Not --quiet: mpirun's line naming a dead rank is what the user sees.
  return std::string(MOE_MPIRUN) + " --allow-run-as-root --oversubscribe -np 2 -x " +
         "OPENBLAS_NUM_THREADS=1 " + MOE_EP_EXE;
}

std::string server_flags(const fs::path& dir) {
  return "--model " + chat_model_yaml(dir) + " --tokenizer " + kQwenTokenizer +
         " --max-model-len 4096 --grace-s 1";
}

TEST(ServeMultirank, SigtermToRankZeroEndsEveryRankWithExitZero) {
  const fs::path dir = temp_dir("serve_term2");
  ServerProcess s(two_rank_server(), server_flags(dir), dir);
  ASSERT_GT(s.port(), 0) << s.log();
  RawConnection stream(s.port());
  ASSERT_TRUE(stream.post(kStream));
  ASSERT_NE(stream.read_until("text_completion", 30).find("text_completion"), std::string::npos);
  const pid_t rank0 = s.rank_pid(0);
  ASSERT_GT(rank0, 0);
  ASSERT_EQ(kill(rank0, SIGTERM), 0);
  const std::string& got = stream.read_until("data: [DONE]", 30);
  EXPECT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(got.size() - 300);
  EXPECT_EQ(s.wait_exit(60), 0) << s.log();
}

TEST(ServeMultirank, AKilledRankAnswersTheOpenStream503AndEndsTheJobNamingIt) {
  const fs::path dir = temp_dir("serve_kill");
  ServerProcess s(two_rank_server(), server_flags(dir), dir);
  ASSERT_GT(s.port(), 0) << s.log();
  RawConnection stream(s.port());
  ASSERT_TRUE(stream.post(kStream));
  ASSERT_NE(stream.read_until("text_completion", 30).find("text_completion"), std::string::npos);
  const pid_t victim = s.rank_pid(1);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const std::string& got = stream.read_until("data: [DONE]", 30);
  ASSERT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(got.size() - 300);
  EXPECT_NE(got.find("\"code\":503"), std::string::npos) << got.substr(got.size() - 300);
  EXPECT_NE(got.find("a rank died or hangs"), std::string::npos) << got.substr(got.size() - 300);
  const int code = s.wait_exit(60);
  EXPECT_GT(code, 0) << "the job did not end, or ended with 0: " << s.log();
  int naming = 0;
  std::istringstream err(s.log());
  for (std::string line; std::getline(err, line);) {
    if (line.find("rank 1") != std::string::npos) ++naming;
  }
  EXPECT_EQ(naming, 1) << s.log();
}

}  // namespace
}  // namespace moe::test
