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

TEST(PhaseEventLog, ChargesEachIntervalToTheLaterMark) {
  PhaseEventLog log(3);
  FakeClock clock;
  clock.record(log.start(), 1.0);
  clock.record(log.mark(2), 1.5);   // 0.5 -> phase 2
  clock.record(log.mark(0), 3.0);   // 1.5 -> phase 0
  clock.record(log.mark(2), 3.25);  // 0.25 -> phase 2
  std::vector<double> s(3, 0.0);
  log.resolve(s, clock.elapsed());
  EXPECT_DOUBLE_EQ(s[0], 1.5);
  EXPECT_DOUBLE_EQ(s[1], 0.0);
  EXPECT_DOUBLE_EQ(s[2], 0.75);
}

TEST(PhaseEventLog, StartChargesNothingForTheGapBeforeIt) {
  PhaseEventLog log(2);
  FakeClock clock;
  clock.record(log.start(), 0.0);
  clock.record(log.mark(0), 1.0);
  clock.record(log.start(), 10.0);  // host time between steps: no phase
  clock.record(log.mark(1), 12.0);
  std::vector<double> s(2, 0.0);
  log.resolve(s, clock.elapsed());
  EXPECT_DOUBLE_EQ(s[0], 1.0);
  EXPECT_DOUBLE_EQ(s[1], 2.0);
}

TEST(PhaseEventLog, MarkWithoutPreviousPointChargesNothing) {
  PhaseEventLog log(1);
  FakeClock clock;
  clock.record(log.mark(0), 5.0);
  std::vector<double> s(1, 0.0);
  log.resolve(s, clock.elapsed());
  EXPECT_DOUBLE_EQ(s[0], 0.0);
}

TEST(PhaseEventLog, NewestPointCarriesOverACollect) {
  PhaseEventLog log(2);
  FakeClock clock;
  clock.record(log.start(), 0.0);
  clock.record(log.mark(0), 1.0);
  std::vector<double> s(2, 0.0);
  log.resolve(s, clock.elapsed());
  EXPECT_EQ(log.num_points(), 1u);
  clock.record(log.mark(1), 4.0);  // charged from the carried point at 1.0
  log.resolve(s, clock.elapsed());
  EXPECT_DOUBLE_EQ(s[0], 1.0);
  EXPECT_DOUBLE_EQ(s[1], 3.0);
}

TEST(PhaseEventLog, SlotsAreReusedSoThePoolStaysBounded) {
  PhaseEventLog log(9);
  FakeClock clock;
  std::vector<double> s(9, 0.0);
  double t = 0.0;
  for (int step = 0; step < 100; ++step) {
    clock.record(log.start(), t += 1.0);
    for (int p = 0; p < 9; ++p) clock.record(log.mark(p), t += 0.5);
    log.resolve(s, clock.elapsed());
  }
  // One step's points (10) plus the carried one.
  EXPECT_LE(log.num_slots(), 11);
  for (int p = 0; p < 9; ++p) EXPECT_DOUBLE_EQ(s[static_cast<size_t>(p)], 50.0) << p;
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
