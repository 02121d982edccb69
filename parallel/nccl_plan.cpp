// All-to-all byte plan, the grouped issue and the deadline poll of the NCCL communicator
// (host-only, see nccl_plan.h). Compiled into moe_parallel with the NCCL communicator, and into the
// CPU tests.
#include "parallel/nccl_plan.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

#include "kernels/common/check.h"

namespace moe::parallel {

AllToAllPlan plan_all_to_all_v(int rank, int size, const int64_t* send_counts, size_t send_size,
                               const int64_t* recv_counts, size_t recv_size, size_t elem_bytes) {
  MOE_CHECK_AS("comm", size >= 1 && rank >= 0 && rank < size, "all_to_all_v: rank {} of {}", rank,
               size);
  MOE_CHECK_AS("comm", elem_bytes > 0, "all_to_all_v: element size 0");
  AllToAllPlan plan;
  size_t send_at = 0, recv_at = 0;  // elements
  for (int p = 0; p < size; ++p) {
    MOE_CHECK_AS("comm", send_counts[p] >= 0 && recv_counts[p] >= 0,
                 "all_to_all_v: negative count for rank {} (send {}, recv {})", p, send_counts[p],
                 recv_counts[p]);
    const size_t ns = static_cast<size_t>(send_counts[p]);
    const size_t nr = static_cast<size_t>(recv_counts[p]);
    if (p == rank) {
      MOE_CHECK_AS("comm", ns == nr,
                   "all_to_all_v: rank {} sends {} elements to itself but expects {}", rank, ns,
                   nr);
      plan.self_send_offset_bytes = send_at * elem_bytes;
      plan.self_recv_offset_bytes = recv_at * elem_bytes;
      plan.self_bytes = ns * elem_bytes;
    } else {
      if (ns > 0) plan.sends.push_back({p, send_at * elem_bytes, ns * elem_bytes});
      if (nr > 0) plan.recvs.push_back({p, recv_at * elem_bytes, nr * elem_bytes});
    }
    send_at += ns;
    recv_at += nr;
  }
  MOE_CHECK_AS("comm", send_at <= send_size,
               "all_to_all_v: send counts total {} elements but the send buffer holds {}", send_at,
               send_size);
  MOE_CHECK_AS("comm", recv_at <= recv_size,
               "all_to_all_v: recv counts total {} elements but the recv buffer holds {}", recv_at,
               recv_size);
  plan.send_bytes = send_at * elem_bytes;
  plan.recv_bytes = recv_at * elem_bytes;
  return plan;
}

AllToAllPlan plan_all_to_all_blocks(int rank, int size, const int64_t* send_bytes,
                                    int64_t block_bytes) {
  MOE_CHECK_AS("comm", size >= 1 && rank >= 0 && rank < size, "all_to_all_blocks: rank {} of {}",
               rank, size);
  MOE_CHECK_AS("comm", block_bytes >= 0, "all_to_all_blocks: block of {} bytes", block_bytes);
  AllToAllPlan plan;
  const size_t block = static_cast<size_t>(block_bytes);
  for (int p = 0; p < size; ++p) {
    if (p == rank) {
      plan.self_send_offset_bytes = plan.self_recv_offset_bytes = p * block;
      plan.self_bytes = send_bytes != nullptr ? static_cast<size_t>(send_bytes[p]) : block;
    } else if (block > 0) {
      plan.sends.push_back({p, p * block, block});
      plan.recvs.push_back({p, p * block, block});
    }
  }
  plan.send_bytes = plan.recv_bytes = block * static_cast<size_t>(size);
  return plan;
}

GroupIssue issue_group(const AllToAllPlan& plan, const GroupCalls& calls) {
  GroupIssue issue;
  if (const int rc = calls.start(); rc != 0) return {rc, "ncclGroupStart"};
  for (const PeerTransfer& t : plan.sends) {
    if (const int rc = calls.send(t); rc != 0) {
      issue = {rc, "ncclSend to rank " + std::to_string(t.peer)};
      break;
    }
  }
  if (issue.ok()) {
    for (const PeerTransfer& t : plan.recvs) {
      if (const int rc = calls.recv(t); rc != 0) {
        issue = {rc, "ncclRecv from rank " + std::to_string(t.peer)};
        break;
      }
    }
  }
  const int end_rc = calls.end();
  if (issue.ok() && end_rc != 0) issue = {end_rc, "ncclGroupEnd"};
  return issue;
}

WaitOutcome wait_with_deadline(const std::function<PollState()>& poll, double timeout_s,
                               const std::function<double()>& now_s) {
  const auto steady_now = [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  const auto now = [&] { return now_s ? now_s() : steady_now(); };
  constexpr int64_t kSpinPolls = 2000;
  constexpr int64_t kYieldPolls = 2000;
  const double start = now();
  WaitOutcome out;
  std::chrono::microseconds sleep{5};
  for (;;) {
    const PollState s = poll();
    ++out.polls;
    if (s != PollState::kPending) {
      out.kind = s == PollState::kDone ? WaitOutcome::Kind::kDone : WaitOutcome::Kind::kFailed;
      out.waited_s = now() - start;
      return out;
    }
    const double waited = now() - start;
    if (waited >= timeout_s) {
      out.kind = WaitOutcome::Kind::kTimedOut;
      out.waited_s = waited;
      return out;
    }
    if (out.polls <= kSpinPolls) continue;
    if (out.polls <= kSpinPolls + kYieldPolls) {
      std::this_thread::yield();
      continue;
    }
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, std::chrono::microseconds(100));
  }
}

}  // namespace moe::parallel
