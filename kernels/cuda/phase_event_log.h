// Bookkeeping of a PhaseTimer on a device timeline: the start()/mark() points of the timed
// regions, each naming the event slot recorded there, resolved into seconds per phase once the
// device has passed them. Pure host code (no CUDA), so tests/gpu_host checks it with a fake clock.
// Invariant: slots of resolved points go back to a free list, so a run of many steps reuses a
// pool no larger than the points between two resolves.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "kernels/common/check.h"

namespace moe::kernels::cuda {

class PhaseEventLog {
 public:
  explicit PhaseEventLog(int num_phases) : num_phases_(num_phases) {
    MOE_CHECK_AS("cuda", num_phases > 0, "phase timer needs at least one phase, got {}",
                 num_phases);
  }

  // A region starts here: time before it is charged to no phase. Returns the slot to record.
  int start() { return add_point(kNoPhase); }
  // The time since the previous point goes to `phase` (nothing when there is no previous
  // point). Returns the slot to record.
  int mark(int phase) {
    MOE_CHECK_AS("cuda", phase >= 0 && phase < num_phases_, "phase {} outside [0, {})", phase,
                 num_phases_);
    return add_point(phase);
  }

  // Points not yet resolved, and the slot of the newest one (-1 when none): the event a
  // resolve must wait for.
  size_t num_points() const { return points_.size(); }
  int last_slot() const { return points_.empty() ? -1 : points_.back().slot; }
  // Slots ever handed out: the size of the event pool the caller keeps.
  int num_slots() const { return num_slots_; }

  // Adds every charge to seconds[phase]; elapsed_s(from_slot, to_slot) gives the device seconds
  // between two recorded slots (all recorded points must have completed). The newest point
  // stays as the start of what follows (a later mark is charged from it); the other slots are
  // freed.
  template <class ElapsedSeconds>
  void resolve(std::span<double> seconds, ElapsedSeconds&& elapsed_s) {
    MOE_CHECK_AS("cuda", seconds.size() == static_cast<size_t>(num_phases_),
                 "phase timer has {} phases, collect() got {}", num_phases_, seconds.size());
    for (size_t i = 1; i < points_.size(); ++i) {
      const Point& p = points_[i];
      if (p.phase != kNoPhase) {
        seconds[static_cast<size_t>(p.phase)] += elapsed_s(points_[i - 1].slot, p.slot);
      }
    }
    if (points_.empty()) return;
    const Point last{kNoPhase, points_.back().slot};
    for (size_t i = 0; i + 1 < points_.size(); ++i) free_.push_back(points_[i].slot);
    points_.assign(1, last);
  }

 private:
  static constexpr int kNoPhase = -1;
  struct Point {
    int phase;  // kNoPhase for a start
    int slot;
  };
  int add_point(int phase) {
    int slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = num_slots_++;
    }
    points_.push_back({phase, slot});
    return slot;
  }

  int num_phases_;
  int num_slots_ = 0;
  std::vector<Point> points_;
  std::vector<int> free_;
};

}  // namespace moe::kernels::cuda
