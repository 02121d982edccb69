// moe-ep started without a launcher is the whole job on its own: it never initialises MPI. Each
// one-process command runs here with an Open MPI that cannot start (OMPI_MCA_pml names no
// component, so MPI_Init would fail and end the process), and errors still end with one line and
// the documented exit code (1 for a bad input, 2 for a usage error).
#include "cli_util.h"

namespace moe::test {
namespace {

// An environment in which MPI_Init fails.
std::string no_mpi() {
  return "env OMPI_MCA_pml=no-such-component " + moe_ep();
}

TEST(StartWithoutMpi, OneProcessCommandsNeverInitialiseMpi) {
  const std::vector<std::string> commands = {
      " --help",
      " plan --model " + source("configs/models/qwen3-30b-a3b.yaml"),
      " tokenize --tokenizer " + source("tests/fixtures/tokenizer/bytes256") + " --text hi",
      " predict --config " + source("configs/bench/tiny.yaml") + " --ranks 2",
  };
  for (const std::string& c : commands) {
    const CommandResult r = run(no_mpi() + c);
    EXPECT_EQ(r.exit_code, 0) << c << "\n" << r.err;
    EXPECT_FALSE(r.out.empty()) << c;
  }
}

TEST(StartWithoutMpi, SingleRankForwardRunsOnTheOneRankCommunicator) {
  const std::string logits = (temp_dir("no_mpi") / "logits.npy").string();
  const CommandResult r = run(no_mpi() + " forward --model " + source("configs/models/tiny.yaml") +
                              " --tokens 1,2,3 --logits-out " + logits);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("1 rank(s)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("comm one-rank"), std::string::npos) << r.err;
}

TEST(StartWithoutMpi, ErrorsEndWithOneLineAndTheirExitCode) {
  const CommandResult bad = run(no_mpi() + " plan --model no-such-model.yaml");
  EXPECT_EQ(bad.exit_code, 1) << bad.err;
  EXPECT_EQ(count_lines(bad.err), 1) << bad.err;
  EXPECT_NE(bad.err.find("moe-ep: error:"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("no-such-model.yaml"), std::string::npos) << bad.err;

  const CommandResult usage = run(no_mpi() + " plan --no-such-flag");
  EXPECT_EQ(usage.exit_code, 2) << usage.err;
}

}  // namespace
}  // namespace moe::test
