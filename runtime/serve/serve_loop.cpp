// The serve loop: intake -> step -> tokens to text; shutdown and failure handling around it.
#include "runtime/serve/serve_loop.h"

#include <fmt/format.h>

#include <map>
#include <thread>

namespace moe::runtime::serve {
namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Rank 0's bookkeeping of the requests in the engine.
struct Active {
  Engine& engine;
  ServeMetrics& metrics;
  std::map<int64_t, std::shared_ptr<ServeRequest>> requests;

  void finish(const ServeRequest& r, int64_t completion_tokens) {
    const Clock::time_point now = Clock::now(), first = r.first_token_at();
    const bool has_first = completion_tokens > 0;
    const double ttft = has_first ? seconds_between(r.arrived(), first) : 0;
    const double tpot =
        completion_tokens > 1 ? seconds_between(first, now) / (completion_tokens - 1) : 0;
    if (has_first) {
      metrics.observe_latency(ttft, tpot, seconds_between(r.arrived(), now), completion_tokens > 1);
    }
    metrics.count_tokens(0, completion_tokens);
  }
  void on_token(int64_t id, int32_t token, Finish f, std::map<int64_t, int64_t>& counts) {
    const auto it = requests.find(id);
    if (it == requests.end()) return;
    ++counts[id];
    if (!it->second->on_token(token, f)) return;
    if (f == Finish::kRunning) engine.cancel(id);  // a stop string ended it
    finish(*it->second, counts[id]);
    counts.erase(id);
    requests.erase(it);
  }
  void fail_all(int status, const std::string& message) {
    for (auto& [id, r] : requests) {
      engine.cancel(id);
      r->fail(status, message);
    }
    requests.clear();
  }
};

void publish_window(Engine& engine, ServeMetrics& metrics, double seconds) {
  std::vector<LayerWindow> layers;
  int64_t steps = 0;
  for (const LayerTotal& t : engine.metrics().window()) {
    layers.push_back({t.layer, t.load.balancedness(), t.load.traffic.bytes_sent_remote});
    steps = t.steps;
  }
  metrics.set_window(steps, seconds, std::move(layers));
}

// Moves queued requests into the engine while KV slots are free (static batches: only into an
// empty engine).
void intake(Engine& engine, RequestQueue& queue, Active& active, bool static_batches) {
  if (static_batches && !engine.idle()) return;
  while (engine.num_slots_used() + engine.num_waiting() < engine.num_slots()) {
    std::shared_ptr<ServeRequest> r = queue.pop();
    if (!r) return;
    engine.submit(r->spec());
    r->mark_started();
    active.metrics.count_tokens(static_cast<int64_t>(r->spec().prompt.size()), 0);
    active.requests.emplace(r->id(), std::move(r));
  }
}

void drop_abandoned(Active& active) {
  for (auto it = active.requests.begin(); it != active.requests.end();) {
    if (!it->second->client_gone()) {
      ++it;
      continue;
    }
    active.engine.cancel(it->first);
    it->second->fail(499, "the client closed the connection");
    it = active.requests.erase(it);
  }
}

}  // namespace

void run_rank0(Engine& engine, HttpFront& front, RequestQueue& queue, ServeMetrics& metrics,
               const LoopOptions& options, const std::atomic<bool>& stop_requested) {
  Active active{engine, metrics, {}};
  std::map<int64_t, int64_t> counts;  // tokens so far per request
  const StepSink sink = [&](int64_t id, int32_t token, Finish f) {
    active.on_token(id, token, f, counts);
  };
  bool draining = false;
  Clock::time_point deadline{}, last_flush = Clock::now(), last_step = Clock::now();
  int64_t steps = 0;
  try {
    for (;;) {
      const Clock::time_point now = Clock::now();
      if (stop_requested && !draining) {
        draining = true;
        deadline = now + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(options.grace_s));
        front.begin_drain();
        for (auto& r : queue.drain()) r->fail(503, "the server is shutting down");
      }
      if (draining && now >= deadline && !active.requests.empty()) {
        active.fail_all(503, fmt::format("the server shut down before the request finished "
                                         "(grace period {} s)", options.grace_s));
      }
      drop_abandoned(active);
      if (!draining) intake(engine, queue, active, options.static_batches);
      const bool stop = draining && active.requests.empty() && engine.idle();
      if (!stop && engine.idle() && queue.size() == 0) {
        queue.wait(std::chrono::milliseconds(20));
        if (seconds_between(last_step, Clock::now()) < options.heartbeat_s) continue;
      }
      const bool flush = seconds_between(last_flush, Clock::now()) >= options.metrics_window_s;
      const StepStats st = engine.step(sink, stop, flush);
      last_step = Clock::now();
      if (st.stop) break;
      steps += st.ran;
      if (flush) {
        publish_window(engine, metrics, seconds_between(last_flush, last_step));
        last_flush = last_step;
      }
      metrics.set_gauges({queue.size() + engine.num_waiting(), engine.num_running(),
                          engine.num_slots_used(), engine.num_slots(), steps});
    }
  } catch (const std::exception& e) {
    // A collective failed: answer every open request before the error ends the job.
    const std::string message = fmt::format("the server failed: {}", e.what());
    front.begin_drain();
    active.fail_all(503, message);
    for (auto& r : queue.drain()) r->fail(503, message);
    const Clock::time_point until = Clock::now() + std::chrono::seconds(2);
    while (front.active_handlers() > 0 && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw;
  }
  // Every request is answered; let the handlers finish writing before the listener stops.
  const Clock::time_point until = Clock::now() + std::chrono::seconds(5);
  while (front.active_handlers() > 0 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void follow(Engine& engine) {
  while (!engine.step(nullptr).stop) {
  }
}

}  // namespace moe::runtime::serve
