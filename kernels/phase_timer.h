// Phase timing on a backend's own timeline. A timed region is a sequence of marks; the time
// between two consecutive marks is charged to the phase named by the later one. Host backends
// read a steady clock; the CUDA backend records events on its compute stream, so asynchronous
// launches are charged to the phase that issued them, not to whichever phase synchronises first.
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moe::kernels {

class PhaseTimer {
 public:
  virtual ~PhaseTimer() = default;
  // Starts a region: time before it is charged to no phase.
  virtual void start() = 0;
  // Charges the time since the previous mark (or start) to `phase` (0 <= phase < num_phases).
  virtual void mark(int phase) = 0;
  // Adds every charge since the last collect() to seconds[phase] (waits for the device if
  // needed) and clears them. seconds.size() must be the timer's num_phases.
  virtual void collect(std::span<double> seconds) = 0;
  // How the times were taken, for reports: "host clock" or "CUDA events".
  virtual std::string method() const = 0;
};

// Steady-clock implementation (host backends; also what a device backend falls back to).
class HostPhaseTimer final : public PhaseTimer {
 public:
  explicit HostPhaseTimer(int num_phases) : pending_(static_cast<size_t>(num_phases), 0.0) {}
  void start() override { last_ = Clock::now(); }
  void mark(int phase) override {
    const auto now = Clock::now();
    pending_.at(static_cast<size_t>(phase)) += std::chrono::duration<double>(now - last_).count();
    last_ = now;
  }
  void collect(std::span<double> seconds) override {
    for (size_t i = 0; i < pending_.size() && i < seconds.size(); ++i) {
      seconds[i] += pending_[i];
      pending_[i] = 0.0;
    }
  }
  std::string method() const override { return "host clock"; }

 private:
  using Clock = std::chrono::steady_clock;
  std::vector<double> pending_;
  Clock::time_point last_ = Clock::now();
};

}  // namespace moe::kernels
