// Rank 0's scheduler loop, between the HTTP front's queue and the engine: at every step boundary
// it drops requests whose client went away, moves queued requests into free KV slots, runs one
// engine step (every rank runs it) and turns the new tokens into text for their requests. It
// publishes the scheduler gauges and, every metrics window, the per-layer figures for /metrics.
// On a stop request it drains: queued requests get 503, running ones finish within the grace
// period (then 503), and the loop ends on every rank. A failed collective (a rank died or hangs)
// answers every open request 503 before the error ends the job; so does a step that does not end
// after a stop request (mpirun signals every rank when one dies, then kills them).
#pragma once

#include <atomic>
#include <cstdint>

#include "runtime/model/engine.h"
#include "runtime/serve/http_server.h"
#include "runtime/serve/prometheus.h"
#include "runtime/serve/request.h"

namespace moe::runtime::serve {

struct LoopOptions {
  bool static_batches = false;  // admit only into an empty engine (the comparison baseline)
  double heartbeat_s = 0.5;     // an idle rank 0 still steps this often (other ranks wait in it)
  double metrics_window_s = 2;  // how often step metrics are folded and published
  double grace_s = 30;          // how long running requests may take to finish after a stop
};

// Rank 0. Returns once a stop was requested (`stop_requested`, e.g. from SIGTERM) and every
// request has been answered; every other rank returns from follow() at the same step.
void run_rank0(Engine& engine, HttpFront& front, RequestQueue& queue, ServeMetrics& metrics,
               const LoopOptions& options, const std::atomic<bool>& stop_requested);
// Every other rank: runs the steps rank 0 plans until it ends the loop.
void follow(Engine& engine);

}  // namespace moe::runtime::serve
