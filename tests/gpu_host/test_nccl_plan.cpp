// NCCL communicator host logic: all_to_all_v byte ranges per peer (rank-order packing, the
// rank's own block as a local copy, validation), and the deadline poll (done, failure, timeout
// on an injected clock).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/common/check.h"
#include "parallel/nccl_plan.h"

namespace moe::parallel {
namespace {

TEST(NcclPlan, BlocksArePackedInRankOrderWithSelfAsLocalCopy) {
  // Rank 1 of 4, elements of 4 bytes.
  const std::vector<int64_t> send = {3, 2, 0, 5}, recv = {1, 2, 4, 0};
  const AllToAllPlan p = plan_all_to_all_v(1, 4, send.data(), 10, recv.data(), 7, 4);
  ASSERT_EQ(p.sends.size(), 2u);  // to ranks 0 and 3 (rank 2 gets nothing)
  EXPECT_EQ(p.sends[0].peer, 0);
  EXPECT_EQ(p.sends[0].offset_bytes, 0u);
  EXPECT_EQ(p.sends[0].size_bytes, 12u);
  EXPECT_EQ(p.sends[1].peer, 3);
  EXPECT_EQ(p.sends[1].offset_bytes, 20u);
  EXPECT_EQ(p.sends[1].size_bytes, 20u);
  ASSERT_EQ(p.recvs.size(), 2u);  // from ranks 0 and 2
  EXPECT_EQ(p.recvs[0].peer, 0);
  EXPECT_EQ(p.recvs[0].offset_bytes, 0u);
  EXPECT_EQ(p.recvs[0].size_bytes, 4u);
  EXPECT_EQ(p.recvs[1].peer, 2);
  EXPECT_EQ(p.recvs[1].offset_bytes, 12u);
  EXPECT_EQ(p.recvs[1].size_bytes, 16u);
  EXPECT_EQ(p.self_send_offset_bytes, 12u);
  EXPECT_EQ(p.self_recv_offset_bytes, 4u);
  EXPECT_EQ(p.self_bytes, 8u);
  EXPECT_EQ(p.send_bytes, 40u);
  EXPECT_EQ(p.recv_bytes, 28u);
  EXPECT_FALSE(p.empty());
}

TEST(NcclPlan, AllZeroCountsIsEmpty) {
  const std::vector<int64_t> zeros(3, 0);
  const AllToAllPlan p = plan_all_to_all_v(2, 3, zeros.data(), 0, zeros.data(), 0, 8);
  EXPECT_TRUE(p.empty());
}

TEST(NcclPlan, RejectsCountsBeyondBuffersNegativeCountsAndSelfMismatch) {
  const std::vector<int64_t> send = {2, 2}, recv = {2, 2};
  EXPECT_THROW(plan_all_to_all_v(0, 2, send.data(), 3, recv.data(), 4, 4), moe::Error);
  EXPECT_THROW(plan_all_to_all_v(0, 2, send.data(), 4, recv.data(), 3, 4), moe::Error);
  const std::vector<int64_t> neg = {2, -1};
  EXPECT_THROW(plan_all_to_all_v(0, 2, neg.data(), 4, recv.data(), 4, 4), moe::Error);
  const std::vector<int64_t> self_more = {3, 1};
  EXPECT_THROW(plan_all_to_all_v(0, 2, self_more.data(), 4, recv.data(), 4, 4), moe::Error);
  EXPECT_THROW(plan_all_to_all_v(2, 2, send.data(), 4, recv.data(), 4, 4), moe::Error);
  EXPECT_NO_THROW(plan_all_to_all_v(0, 2, send.data(), 4, recv.data(), 4, 4));
}

TEST(NcclWait, ReturnsDoneAfterPendingPolls) {
  int calls = 0;
  const WaitOutcome w = wait_with_deadline(
      [&] { return ++calls < 5 ? PollState::kPending : PollState::kDone; }, 10.0);
  EXPECT_EQ(w.kind, WaitOutcome::Kind::kDone);
  EXPECT_EQ(w.polls, 5);
}

TEST(NcclWait, ReportsFailureImmediately) {
  const WaitOutcome w = wait_with_deadline([] { return PollState::kFailed; }, 10.0);
  EXPECT_EQ(w.kind, WaitOutcome::Kind::kFailed);
  EXPECT_EQ(w.polls, 1);
}

TEST(NcclWait, TimesOutOnTheInjectedClockWithoutHanging) {
  double now = 100.0;
  int64_t polls = 0;
  const WaitOutcome w = wait_with_deadline(
      [&] {
        ++polls;
        return PollState::kPending;
      },
      2.5, [&] { return now += 0.01; });  // every clock read advances 10 ms
  EXPECT_EQ(w.kind, WaitOutcome::Kind::kTimedOut);
  EXPECT_GE(w.waited_s, 2.5);
  EXPECT_LT(w.waited_s, 2.6);
  EXPECT_EQ(w.polls, polls);
  EXPECT_GT(polls, 100);
}

TEST(NcclWait, RealClockTimeoutIsBounded) {
  const WaitOutcome w = wait_with_deadline([] { return PollState::kPending; }, 0.05);
  EXPECT_EQ(w.kind, WaitOutcome::Kind::kTimedOut);
  EXPECT_GE(w.waited_s, 0.05);
  EXPECT_LT(w.waited_s, 5.0);
}

}  // namespace
}  // namespace moe::parallel
