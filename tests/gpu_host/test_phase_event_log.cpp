// PhaseEventLog: the bookkeeping behind the CUDA-event PhaseTimer, checked against a fake device
// clock (slot -> seconds): which interval each phase is charged, carry-over across collects,
// and that the event pool stays bounded over many steps.
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "kernels/cuda/phase_event_log.h"

namespace moe::kernels::cuda {
namespace {

// Records the fake device time of each slot as the timer would record an event.
struct FakeClock {
  std::map<int, double> at;
  void record(int slot, double t) { at[slot] = t; }
  auto elapsed() {
    return [this](int from, int to) { return at.at(to) - at.at(from); };
  }
};

// A log of num_phases phases whose points are recorded at fake device times, and the seconds
// charged to each phase so far.
struct TimedLog {
  PhaseEventLog log;
  FakeClock clock;
  std::vector<double> seconds;
  explicit TimedLog(int num_phases) : log(num_phases), seconds(num_phases, 0.0) {}
  void start(double t) { clock.record(log.start(), t); }
  void mark(int phase, double t) { clock.record(log.mark(phase), t); }
  void resolve() { log.resolve(seconds, clock.elapsed()); }
};

TEST(PhaseEventLog, ChargesEachIntervalToTheLaterMark) {
  TimedLog t(3);
  t.start(1.0);
  t.mark(2, 1.5);   // 0.5 -> phase 2
  t.mark(0, 3.0);   // 1.5 -> phase 0
  t.mark(2, 3.25);  // 0.25 -> phase 2
  t.resolve();
  EXPECT_DOUBLE_EQ(t.seconds[0], 1.5);
  EXPECT_DOUBLE_EQ(t.seconds[1], 0.0);
  EXPECT_DOUBLE_EQ(t.seconds[2], 0.75);
}

TEST(PhaseEventLog, StartChargesNothingForTheGapBeforeIt) {
  TimedLog t(2);
  t.start(0.0);
  t.mark(0, 1.0);
  t.start(10.0);  // host time between steps: no phase
  t.mark(1, 12.0);
  t.resolve();
  EXPECT_DOUBLE_EQ(t.seconds[0], 1.0);
  EXPECT_DOUBLE_EQ(t.seconds[1], 2.0);
}

TEST(PhaseEventLog, MarkWithoutPreviousPointChargesNothing) {
  TimedLog t(1);
  t.mark(0, 5.0);
  t.resolve();
  EXPECT_DOUBLE_EQ(t.seconds[0], 0.0);
}

TEST(PhaseEventLog, NewestPointCarriesOverACollect) {
  TimedLog t(2);
  t.start(0.0);
  t.mark(0, 1.0);
  t.resolve();
  EXPECT_EQ(t.log.num_points(), 1u);
  t.mark(1, 4.0);  // charged from the carried point at 1.0
  t.resolve();
  EXPECT_DOUBLE_EQ(t.seconds[0], 1.0);
  EXPECT_DOUBLE_EQ(t.seconds[1], 3.0);
}

TEST(PhaseEventLog, SlotsAreReusedSoThePoolStaysBounded) {
  TimedLog t(9);
  double now = 0.0;
  for (int step = 0; step < 100; ++step) {
    t.start(now += 1.0);
    for (int p = 0; p < 9; ++p) t.mark(p, now += 0.5);
    t.resolve();
  }
  // One step's points (10) plus the carried one.
  EXPECT_LE(t.log.num_slots(), 11);
  for (int p = 0; p < 9; ++p) EXPECT_DOUBLE_EQ(t.seconds[static_cast<size_t>(p)], 50.0) << p;
}

TEST(PhaseEventLog, RejectsPhaseOutOfRangeAndWrongSpan) {
  PhaseEventLog log(2);
  EXPECT_THROW(log.mark(2), moe::Error);
  EXPECT_THROW(log.mark(-1), moe::Error);
  std::vector<double> s(3, 0.0);
  EXPECT_THROW(log.resolve(s, [](int, int) { return 0.0; }), moe::Error);
}

}  // namespace
}  // namespace moe::kernels::cuda
