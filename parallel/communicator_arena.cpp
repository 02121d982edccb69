// SharedArena (communicator.h): counters in memory every rank maps, published with release stores
// and polled with acquire loads. A waiting rank yields, then sleeps on the counter (a futex on
// Linux, which the publisher wakes). When ranks share cores (4 ranks on 2 here) it sleeps soon,
// since polling would take the core from the rank it waits for; otherwise only after a long
// wait, since waking a sleeper costs tens of microseconds (more on a VM, whose idle vCPU halts).
#include <sched.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <ctime>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace moe::parallel {
namespace {

constexpr int64_t kCounterStride = 8;  // uint64 per counter: one 64-byte line each
constexpr auto kArenaYieldShared = std::chrono::microseconds(50);  // ranks share cores
constexpr auto kArenaYieldAlone = std::chrono::milliseconds(20);   // a core per rank
constexpr auto kArenaSleepSlice = std::chrono::milliseconds(10);   // the deadline is checked

// The futex word of a counter: its low 32 bits (x86 and every Linux target here are little
// endian; a waiter that sees a stale word returns at once and polls again).
uint32_t* futex_word(uint64_t* counter) {
  return reinterpret_cast<uint32_t*>(counter);
}

void wake_all(uint64_t* counter) {
#if defined(__linux__)
  syscall(SYS_futex, futex_word(counter), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
#else
  (void)counter;
#endif
}

// Sleeps while the counter's low word is still `seen_low` (at most one slice; spurious returns are
// fine: the caller polls again).
void sleep_on(uint64_t* counter, uint32_t seen_low) {
#if defined(__linux__)
  timespec slice{0, std::chrono::duration_cast<std::chrono::nanoseconds>(kArenaSleepSlice).count()};
  syscall(SYS_futex, futex_word(counter), FUTEX_WAIT, seen_low, &slice, nullptr, 0);
#else
  (void)counter;
  (void)seen_low;
  sched_yield();
#endif
}

}  // namespace

uint64_t* SharedArena::counter_at(int rank, int counter) const {
  return counters_ + (static_cast<int64_t>(rank) * kCounters + counter) * kCounterStride;
}

void SharedArena::publish(int counter, uint64_t value) {
  uint64_t* c = counter_at(rank_, counter);
  std::atomic_ref<uint64_t>(*c).store(value, std::memory_order_release);
  wake_all(c);
}

void SharedArena::wait_all(int counter, uint64_t value, const char* op) const {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(timeout_s_));
  for (int r = 0; r < num_ranks_; ++r) {
    if (r == rank_) continue;
    uint64_t* c = counter_at(r, counter);
    std::atomic_ref<uint64_t> seen(*c);
    for (uint64_t now_seen = seen.load(std::memory_order_acquire); now_seen < value;
         now_seen = seen.load(std::memory_order_acquire)) {
      const Clock::time_point now = Clock::now();
      MOE_CHECK_AS("comm", now < deadline,
                   "shared-memory {} did not complete within {:g} s on rank {}: rank {} never "
                   "published (it failed or is stuck)",
                   op, timeout_s_, rank_, r);
      if (now - start < (oversubscribed_ ? kArenaYieldShared : kArenaYieldAlone)) {
        sched_yield();
      } else {
        sleep_on(c, static_cast<uint32_t>(now_seen));
      }
    }
  }
}

}  // namespace moe::parallel
