// CUDA-event PhaseTimer (see event_phase_timer.h). Bookkeeping is PhaseEventLog's; this file
// only owns the event pool and talks to the CUDA runtime. Events are created with timing on
// (cudaEventElapsedTime needs it) and lazily, when the log hands out a slot not seen before.
#include "kernels/cuda/event_phase_timer.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "kernels/common/check.h"
#include "kernels/cuda/cuda_raii.h"
#include "kernels/cuda/phase_event_log.h"

namespace moe::kernels::cuda {
namespace {

class EventPhaseTimer final : public PhaseTimer {
 public:
  EventPhaseTimer(int num_phases, cudaStream_t stream)
      : log_(num_phases), stream_(stream), pending_(static_cast<size_t>(num_phases), 0.0) {}

  void start() override {
    if (log_.num_points() > kMaxPendingPoints) resolve();
    record(log_.start());
  }
  void mark(int phase) override { record(log_.mark(phase)); }

  void collect(std::span<double> seconds) override {
    resolve();
    for (size_t i = 0; i < pending_.size() && i < seconds.size(); ++i) {
      seconds[i] += pending_[i];
      pending_[i] = 0.0;
    }
  }
  std::string method() const override { return "CUDA events"; }

 private:
  void record(int slot) {
    while (static_cast<int>(events_.size()) <= slot) events_.push_back(Event::create(true));
    MOE_CUDA_CHECK(cudaEventRecord(events_[static_cast<size_t>(slot)].get(), stream_));
  }

  // Waits for the newest recorded point, then charges every interval into pending_.
  void resolve() {
    const int last = log_.last_slot();
    if (last < 0) return;
    MOE_CUDA_CHECK(cudaEventSynchronize(events_[static_cast<size_t>(last)].get()));
    log_.resolve(std::span<double>(pending_), [&](int from, int to) {
      float ms = 0.0f;
      MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, events_[static_cast<size_t>(from)].get(),
                                          events_[static_cast<size_t>(to)].get()));
      return static_cast<double>(ms) * 1e-3;
    });
  }

  PhaseEventLog log_;
  cudaStream_t stream_;
  std::vector<Event> events_;    // [log_.num_slots()]
  std::vector<double> pending_;  // resolved seconds not yet collected, per phase
};

}  // namespace

std::unique_ptr<PhaseTimer> make_event_phase_timer(int num_phases, CUstream_st* stream) {
  MOE_CHECK_AS("cuda", stream != nullptr, "make_event_phase_timer: no stream");
  return std::make_unique<EventPhaseTimer>(num_phases, stream);
}

}  // namespace moe::kernels::cuda
