// The PhaseTimer of the CUDA backend: an event recorded on the compute stream at every start()
// and mark(), resolved by cudaEventElapsedTime in collect(), so each phase is charged the device
// time of the work it enqueued. No CUDA headers here; the backend and tests include it freely.
#pragma once

#include <memory>

#include "kernels/phase_timer.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace moe::kernels::cuda {

// Events are recorded on `stream` (not owned; must outlive the timer) and kept in a pool reused
// across steps. collect() waits for the newest recorded event; so does a start() once more than
// kMaxPendingPoints marks are unresolved, which bounds the pool on long runs without collect().
std::unique_ptr<PhaseTimer> make_event_phase_timer(int num_phases, CUstream_st* stream);

inline constexpr size_t kMaxPendingPoints = 4096;

}  // namespace moe::kernels::cuda
