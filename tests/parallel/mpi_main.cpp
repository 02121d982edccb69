// main() of moe_test_parallel_mpi: starts MPI, runs the gtest suite on every rank (only rank 0
// prints the usual report; other ranks print just their failures), and makes all ranks agree on
// the exit code. `--fault=throw|stuck` instead runs a job that must end non-zero (see below).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace {

// Failure-only printer for ranks other than 0, so a rank-specific failure is never silent.
// The test's name is remembered in OnTestStart: OnTestPartResult runs while GoogleTest holds its
// own lock, and calling current_test_info() there deadlocks the rank (the failure would then
// surface as a ctest timeout instead of a message).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_name_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s failed at %s:%d\n%s\n", rank_, test_name_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
  std::string test_name_ = "?";
};

// The fault paths of a real job: the last rank throws (`throw`) or never enters a collective
// (`stuck`); main's handler must end every rank with one line and a non-zero exit.
[[noreturn]] void run_fault_job(const std::string& mode) {
  using namespace moe::parallel;
  try {
    CommOptions options;
    options.timeout_s = mode == "stuck" ? 2.0 : 60.0;
    auto comm = make_mpi_communicator(options);
    comm->barrier();
    const int victim = comm->size() - 1;
    if (comm->rank() == victim) {
      if (mode == "throw") MOE_THROW("test", "injected failure on rank {}", victim);
      MOE_CHECK(mode == "stuck", "unknown --fault mode '{}' (throw or stuck)", mode);
      std::this_thread::sleep_for(std::chrono::seconds(120));  // longer than the ctest timeout
    }
    comm->barrier();  // the other ranks wait here: MPI_Abort or the timeout must end them
    MOE_THROW("test", "fault job '{}' was not stopped", mode);
  } catch (const moe::Error& e) {
    MpiSession::abort_job(fmt::format("moe_test_parallel_mpi: error: {}", e.what()), 3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  moe::parallel::MpiSession mpi(&argc, &argv);
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--fault=", 8) == 0) run_fault_job(argv[i] + 8);
  }
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = mpi.world_rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  int rc = RUN_ALL_TESTS();
  try {
    moe::parallel::CommOptions options;
    options.timeout_s = 60;
    auto comm = moe::parallel::make_mpi_communicator(options);
    int32_t worst = rc;
    comm->all_reduce<int32_t>({&worst, 1}, moe::parallel::ReduceOp::kMax);
    rc = worst;
    comm->shutdown();
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "[rank %d] could not agree on the result: %s\n", rank, e.what());
    rc = 1;
  }
  if (rank == 0 && rc != 0) std::fprintf(stderr, "some rank failed (see [rank N] lines)\n");
  return rc;
}
