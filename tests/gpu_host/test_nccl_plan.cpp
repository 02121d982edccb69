// NCCL communicator host logic: all_to_all_v byte ranges per peer (rank-order packing, the
// rank's own block as a local copy, validation), the grouped issue (a failure inside the group
// stops the issue and still ends the group), and the deadline poll (done, failure, timeout on an
// injected clock).
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kernels/common/check.h"
#include "parallel/nccl_plan.h"

namespace moe::parallel {
namespace {

void expect_transfer(const PeerTransfer& t, int peer, size_t offset_bytes, size_t size_bytes,
                     const char* what) {
  EXPECT_EQ(t.peer, peer) << what;
  EXPECT_EQ(t.offset_bytes, offset_bytes) << what;
  EXPECT_EQ(t.size_bytes, size_bytes) << what;
}

TEST(NcclPlan, BlocksArePackedInRankOrderWithSelfAsLocalCopy) {
  // Rank 1 of 4, elements of 4 bytes.
  const std::vector<int64_t> send = {3, 2, 0, 5}, recv = {1, 2, 4, 0};
  const AllToAllPlan p = plan_all_to_all_v(1, 4, send.data(), 10, recv.data(), 7, 4);
  ASSERT_EQ(p.sends.size(), 2u);  // to ranks 0 and 3 (rank 2 gets nothing)
  expect_transfer(p.sends[0], 0, 0, 12, "send 0");
  expect_transfer(p.sends[1], 3, 20, 20, "send 1");
  ASSERT_EQ(p.recvs.size(), 2u);  // from ranks 0 and 2
  expect_transfer(p.recvs[0], 0, 0, 4, "recv 0");
  expect_transfer(p.recvs[1], 2, 12, 16, "recv 1");
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

// The calls issue_group makes, in order ("start", "send 3", "recv 0", "end"); a call listed in
// `failing` returns its code.
struct RecordedGroup {
  std::vector<std::string> calls;
  std::map<std::string, int> failing;
  int answer(const std::string& call) {
    calls.push_back(call);
    const auto it = failing.find(call);
    return it == failing.end() ? 0 : it->second;
  }
  GroupCalls functions() {
    return {[this] { return answer("start"); },
            [this](const PeerTransfer& t) { return answer("send " + std::to_string(t.peer)); },
            [this](const PeerTransfer& t) { return answer("recv " + std::to_string(t.peer)); },
            [this] { return answer("end"); }};
  }
};

AllToAllPlan two_peer_plan() {  // rank 1 of 3: sends to and receives from ranks 0 and 2
  const std::vector<int64_t> counts = {1, 1, 1};
  return plan_all_to_all_v(1, 3, counts.data(), 3, counts.data(), 3, 4);
}

TEST(NcclGroup, IssuesEverySendThenEveryRecvInsideOneGroup) {
  RecordedGroup g;
  const GroupIssue issue = issue_group(two_peer_plan(), g.functions());
  EXPECT_TRUE(issue.ok());
  EXPECT_EQ(issue.call, "");
  EXPECT_EQ(g.calls,
            (std::vector<std::string>{"start", "send 0", "send 2", "recv 0", "recv 2", "end"}));
}

TEST(NcclGroup, AFailedSendStopsTheIssueButStillEndsTheGroup) {
  RecordedGroup g{{}, {{"send 0", 5}, {"end", 1}}};
  const GroupIssue issue = issue_group(two_peer_plan(), g.functions());
  EXPECT_FALSE(issue.ok());
  EXPECT_EQ(issue.result, 5);  // the first failure, not the group end's
  EXPECT_EQ(issue.call, "ncclSend to rank 0");
  EXPECT_EQ(g.calls, (std::vector<std::string>{"start", "send 0", "end"}));
}

TEST(NcclGroup, AFailedRecvStopsTheIssueButStillEndsTheGroup) {
  RecordedGroup g{{}, {{"recv 2", 3}}};
  const GroupIssue issue = issue_group(two_peer_plan(), g.functions());
  EXPECT_EQ(issue.result, 3);
  EXPECT_EQ(issue.call, "ncclRecv from rank 2");
  EXPECT_EQ(g.calls,
            (std::vector<std::string>{"start", "send 0", "send 2", "recv 0", "recv 2", "end"}));
}

TEST(NcclGroup, AFailedStartOpensNoGroupAndAFailedEndIsReported) {
  RecordedGroup no_start{{}, {{"start", 2}}};
  GroupIssue issue = issue_group(two_peer_plan(), no_start.functions());
  EXPECT_EQ(issue.result, 2);
  EXPECT_EQ(issue.call, "ncclGroupStart");
  EXPECT_EQ(no_start.calls, std::vector<std::string>{"start"});
  RecordedGroup bad_end{{}, {{"end", 6}}};
  issue = issue_group(two_peer_plan(), bad_end.functions());
  EXPECT_EQ(issue.result, 6);
  EXPECT_EQ(issue.call, "ncclGroupEnd");
  EXPECT_EQ(bad_end.calls.size(), 6u);
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
