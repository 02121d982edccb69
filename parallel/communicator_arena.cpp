// SharedArena (communicator.h): counters in memory every rank maps, published with release stores
// and polled with acquire loads. A waiting rank yields between polls, since ranks may share cores
// (4 ranks on 2 here) and a spinning one would starve the rank it waits for.
#include <sched.h>

#include <atomic>
#include <chrono>

#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace moe::parallel {
namespace {

constexpr int64_t kCounterStride = 8;  // uint64 per counter: one 64-byte line each
constexpr int kArenaSpinPolls = 64;    // polls before the first yield

}  // namespace

uint64_t* SharedArena::counter_at(int rank, int counter) const {
  return counters_ + (static_cast<int64_t>(rank) * kCounters + counter) * kCounterStride;
}

void SharedArena::publish(int counter, uint64_t value) {
  std::atomic_ref<uint64_t>(*counter_at(rank_, counter)).store(value, std::memory_order_release);
}

void SharedArena::wait_all(int counter, uint64_t value, const char* op) const {
  using Clock = std::chrono::steady_clock;
  Clock::time_point deadline{};
  for (int r = 0; r < num_ranks_; ++r) {
    if (r == rank_) continue;
    std::atomic_ref<uint64_t> seen(*counter_at(r, counter));
    for (int poll = 0; seen.load(std::memory_order_acquire) < value; ++poll) {
      if (poll < kArenaSpinPolls) continue;
      sched_yield();
      if (poll % 64 != 0) continue;
      const Clock::time_point now = Clock::now();
      if (deadline == Clock::time_point{}) {
        deadline = now + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(timeout_s_));
      }
      MOE_CHECK_AS("comm", now < deadline,
                   "shared-memory {} did not complete within {:g} s on rank {}: rank {} never "
                   "published (it failed or is stuck)",
                   op, timeout_s_, rank_, r);
    }
  }
}

}  // namespace moe::parallel
