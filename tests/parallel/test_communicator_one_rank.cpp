// The one-rank communicator (a process started without a launcher is the whole job) and the
// launcher detection that decides whether moe-ep starts MPI. This binary never initialises MPI,
// so make_host_communicator must give the one-rank communicator here.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace moe::parallel {
namespace {

// The variables started_by_launcher() reads, cleared for a test and restored after it.
class LauncherEnv {
 public:
  LauncherEnv() {
    for (const char* name : kNames) {
      const char* v = std::getenv(name);
      saved_.emplace_back(v ? std::optional<std::string>(v) : std::nullopt);
      unsetenv(name);
    }
  }
  ~LauncherEnv() {
    for (size_t i = 0; i < saved_.size(); ++i) {
      if (saved_[i]) {
        setenv(kNames[i], saved_[i]->c_str(), 1);
      } else {
        unsetenv(kNames[i]);
      }
    }
  }
  static constexpr const char* kNames[] = {
      "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",    "PMI_RANK",    "PMI_SIZE",
      "SLURM_PROCID",         "SLURM_NTASKS", "OMPI_MCA_pml"};

 private:
  std::vector<std::optional<std::string>> saved_;
};

TEST(StartedByLauncher, EachLauncherVariableCountsAndGeneralSettingsDoNot) {
  LauncherEnv env;
  EXPECT_FALSE(started_by_launcher());
  setenv("OMPI_MCA_pml", "ob1", 1);  // a setting, not a launcher
  EXPECT_FALSE(started_by_launcher());
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    setenv(name, "2", 1);
    EXPECT_TRUE(started_by_launcher()) << name;
    unsetenv(name);
  }
  setenv("SLURM_PROCID", "0", 1);  // alone: not enough (srun sets both)
  EXPECT_FALSE(started_by_launcher());
  setenv("SLURM_NTASKS", "4", 1);
  EXPECT_TRUE(started_by_launcher());
}

TEST(OneRankCommunicator, IsTheHostCommunicatorWithoutMpiAndRankZeroOfOne) {
  auto comm = make_host_communicator({});
  EXPECT_EQ(comm->name(), "one-rank");
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->local_rank(), 0);
  EXPECT_EQ(comm->local_size(), 1);
  EXPECT_FALSE(comm->device_buffers());
  EXPECT_EQ(make_communicator(CommKind::kMpi, {})->name(), "one-rank");
}

TEST(OneRankCommunicator, ExchangesCopyToItselfAndCheckTheirCounts) {
  auto comm = make_one_rank_communicator();
  const std::vector<int64_t> a = {5, -3, 7};
  std::vector<int64_t> b(3, 0);
  comm->all_to_all(a, b);
  EXPECT_EQ(b, a);
  std::vector<int64_t> short_recv(2);
  EXPECT_THROW(comm->all_to_all(a, short_recv), moe::Error);

  const std::vector<float> send = {1.5f, 2.5f, 3.5f, 4.5f};
  std::vector<float> recv(5, -1.f);
  const std::vector<int64_t> three = {3};
  comm->all_to_all_v<float>(send, three, recv, three);
  EXPECT_EQ(recv, (std::vector<float>{1.5f, 2.5f, 3.5f, -1.f, -1.f}));
  const std::vector<int64_t> two = {2}, six = {6}, negative = {-1}, per_two_ranks = {1, 1};
  EXPECT_THROW(comm->all_to_all_v<float>(send, three, recv, two), moe::Error);  // 3 vs 2
  EXPECT_THROW(comm->all_to_all_v<float>(send, six, recv, six), moe::Error);    // > send
  EXPECT_THROW(comm->all_to_all_v<float>(send, negative, recv, negative), moe::Error);
  EXPECT_THROW(comm->all_to_all_v<float>(send, per_two_ranks, recv, per_two_ranks), moe::Error);
}

TEST(OneRankCommunicator, CollectivesOfOneRankKeepOrCopyTheData) {
  auto comm = make_one_rank_communicator();
  std::vector<double> d = {1.0, -2.0};
  comm->all_reduce<double>(d, ReduceOp::kSum);
  EXPECT_EQ(d, (std::vector<double>{1.0, -2.0}));
  std::vector<int32_t> v = {4, 5};
  comm->broadcast<int32_t>(v, 0);
  EXPECT_EQ(v, (std::vector<int32_t>{4, 5}));
  EXPECT_THROW(comm->broadcast<int32_t>(v, 1), moe::Error);

  std::vector<int32_t> gathered(2);
  comm->all_gather<int32_t>(v, gathered);
  EXPECT_EQ(gathered, v);
  std::vector<int32_t> too_big(4);
  EXPECT_THROW(comm->all_gather<int32_t>(v, too_big), moe::Error);

  std::vector<int32_t> at_root(3, 0);
  const std::vector<int64_t> counts = {2}, wrong = {3};
  comm->gather_v<int32_t>(v, at_root, counts, 0);
  EXPECT_EQ(at_root, (std::vector<int32_t>{4, 5, 0}));
  EXPECT_THROW(comm->gather_v<int32_t>(v, at_root, wrong, 0), moe::Error);
  EXPECT_THROW(comm->gather_v<int32_t>(v, at_root, counts, 1), moe::Error);
  comm->barrier();
}

TEST(OneRankCommunicator, RefusesCallsAfterShutdown) {
  auto comm = make_one_rank_communicator();
  comm->shutdown();
  EXPECT_THROW(comm->barrier(), moe::Error);
  std::vector<int64_t> x(1);
  EXPECT_THROW(comm->all_to_all(x, x), moe::Error);
}

TEST(OneRankCommunicatorDeathTest, AbortPrintsTheReasonAndExitsWithTheCode) {
  auto comm = make_one_rank_communicator();
  EXPECT_EXIT(comm->abort("moe-ep: error: stop here", 5), ::testing::ExitedWithCode(5),
              "moe-ep: error: stop here");
}

}  // namespace
}  // namespace moe::parallel
