// Host-side logic of the NCCL communicator, free of NCCL/CUDA so it is unit-tested on the CPU:
// the per-peer byte ranges of an all_to_all_v (validated against the buffer sizes) and of a
// fixed-block exchange (whole blocks: a receive must know its size), the issue of
// its transfers as one NCCL group (a failure inside the group still ends the group), and the
// deadline-bounded completion poll every device-side wait goes through.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moe::parallel {

// One contiguous piece of an all_to_all_v: bytes [offset_bytes, offset_bytes + size_bytes) of the
// send (or recv) buffer go to (come from) `peer`.
struct PeerTransfer {
  int peer = 0;
  size_t offset_bytes = 0, size_bytes = 0;
};

// sends/recvs: non-empty transfers with other ranks, in rank order. The rank's own block is a
// local device copy send[self_send_offset_bytes..] -> recv[self_recv_offset_bytes..].
struct AllToAllPlan {
  std::vector<PeerTransfer> sends;
  std::vector<PeerTransfer> recvs;
  size_t self_send_offset_bytes = 0;
  size_t self_recv_offset_bytes = 0;
  size_t self_bytes = 0;
  size_t send_bytes = 0;  // total over all peers, self included
  size_t recv_bytes = 0;
  bool empty() const { return sends.empty() && recvs.empty() && self_bytes == 0; }
};

// Counts are elements of elem_bytes each, one per rank (size entries). Blocks are packed in rank
// order (displacement = prefix sum of counts). Throws moe::Error("comm") on a negative count,
// counts that exceed the buffers, or send_counts[rank] != recv_counts[rank].
AllToAllPlan plan_all_to_all_v(int rank, int size, const int64_t* send_counts, size_t send_size,
                               const int64_t* recv_counts, size_t recv_size, size_t elem_bytes);

// Fixed blocks of block_bytes, block p at p * block_bytes on both sides: whole blocks to and from
// every other rank; the own block is copied, send_bytes[rank] of it when send_bytes is given.
AllToAllPlan plan_all_to_all_blocks(int rank, int size, const int64_t* send_bytes,
                                    int64_t block_bytes);

// The NCCL calls of one grouped exchange. Each returns 0 when the call succeeded (or is in
// progress on a nonblocking communicator), else the failing ncclResult_t.
struct GroupCalls {
  std::function<int()> start;  // ncclGroupStart
  std::function<int(const PeerTransfer&)> send;
  std::function<int(const PeerTransfer&)> recv;
  std::function<int()> end;  // ncclGroupEnd
};

// The first failing call of a grouped exchange, if any.
struct GroupIssue {
  int result = 0;    // 0: every call succeeded
  std::string call;  // the failing call, e.g. "ncclSend to rank 3"
  bool ok() const { return result == 0; }
};

// start(), every send, then every recv of `plan`, end(). The first failing send or recv stops the
// issue, and the group it opened is still ended, so the communicator can be aborted cleanly
// afterwards (never with a group left open). A failing start() opened no group: end() is not
// called. The result names the first failure (end()'s own only when all else succeeded).
GroupIssue issue_group(const AllToAllPlan& plan, const GroupCalls& calls);

enum class PollState { kDone, kPending, kFailed };

struct WaitOutcome {
  enum class Kind { kDone, kFailed, kTimedOut } kind = Kind::kDone;
  int64_t polls = 0;
  double waited_s = 0.0;
};

// Calls poll() until it returns kDone or kFailed or timeout_s has passed on `now_s` (seconds on
// a monotonic clock); between polls it spins briefly, then yields, then sleeps up to 100 us.
// The clock is injectable for tests; by default std::chrono::steady_clock.
WaitOutcome wait_with_deadline(const std::function<PollState()>& poll, double timeout_s,
                               const std::function<double()>& now_s = {});

}  // namespace moe::parallel
