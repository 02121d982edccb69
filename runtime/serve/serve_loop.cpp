// The serve loop: intake -> step -> tokens to text; shutdown and failure handling around it.
#include "runtime/serve/serve_loop.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <thread>

namespace moe::runtime::serve {
namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Rank 0's bookkeeping of the requests in the engine. The loop thread changes it; the watchdog
// only fails what it holds (both under `mutex`).
struct Active {
  Engine& engine;
  ServeMetrics& metrics;
  std::map<int64_t, std::shared_ptr<ServeRequest>> requests;
  std::mutex mutex;

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
    std::lock_guard lock(mutex);
    const auto it = requests.find(id);
    if (it == requests.end()) return;
    const int64_t completion_tokens = ++counts[id];
    const auto count_it = [&](const ServeRequest& r) { finish(r, completion_tokens); };
    if (!it->second->on_token(token, f, count_it)) return;
    if (f == Finish::kRunning) engine.cancel(id);  // a stop string ended it
    counts.erase(id);
    requests.erase(it);
  }
  // From another thread: answers every request without touching the engine (the loop thread
  // drops them from it at its next step boundary).
  void fail_open(int status, const std::string& message) {
    std::lock_guard lock(mutex);
    for (auto& [id, r] : requests) r->fail(status, message);
  }
  void fail_all(int status, const std::string& message) {
    std::lock_guard lock(mutex);
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
    std::lock_guard lock(active.mutex);
    active.requests.emplace(r->id(), std::move(r));
  }
}

void drop_abandoned(Active& active) {
  std::lock_guard lock(active.mutex);
  for (auto it = active.requests.begin(); it != active.requests.end();) {
    if (!it->second->client_gone() && !it->second->finished()) {
      ++it;
      continue;
    }
    active.engine.cancel(it->first);
    it->second->fail(499, "the client closed the connection");  // no-op when it has failed
    it = active.requests.erase(it);
  }
}

// After a stop request, a step that does not end is a rank that died or hangs: the launcher
// (mpirun signals every rank when one dies, and kills them a second later) or the collective
// timeout will end the job, so the open requests are answered 503 now. "Does not end": longer
// than max(0.3 s, 3x the longest of the recent steps).
class Watchdog {
 public:
  Watchdog(Active& active, RequestQueue& queue, const std::atomic<bool>& stop_requested)
      : active_(active),
        queue_(queue),
        stop_requested_(stop_requested),
        thread_([this] { watch(); }) {}
  ~Watchdog() {
    done_ = true;
    thread_.join();
  }
  void step_begins() { began_ns_ = now_ns(); }
  void step_ends() {
    const int64_t took = now_ns() - began_ns_.exchange(0);
    longest_ns_ = std::max<int64_t>(longest_ns_ * 63 / 64, took);
  }

 private:
  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
  }
  void watch() {
    while (!done_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      const int64_t began = began_ns_;
      const int64_t limit = std::max<int64_t>(300'000'000, 3 * longest_ns_);
      if (!stop_requested_ || began == 0 || now_ns() - began < limit) continue;
      const std::string message =
          "the server is stopping and a step across ranks does not end (a rank died or hangs)";
      active_.fail_open(503, message);
      for (auto& r : queue_.drain()) r->fail(503, message);
    }
  }
  Active& active_;
  RequestQueue& queue_;
  const std::atomic<bool>& stop_requested_;
  std::atomic<int64_t> began_ns_{0}, longest_ns_{0};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace

void run_rank0(Engine& engine, HttpFront& front, RequestQueue& queue, ServeMetrics& metrics,
               const LoopOptions& options, const std::atomic<bool>& stop_requested) {
  Active active{engine, metrics, {}, {}};
  std::map<int64_t, int64_t> counts;  // tokens so far per request
  const StepSink sink = [&](int64_t id, int32_t token, Finish f) {
    active.on_token(id, token, f, counts);
  };
  bool draining = false;
  Clock::time_point deadline{}, last_flush = Clock::now(), last_step = Clock::now();
  int64_t steps = 0;
  Watchdog watchdog(active, queue, stop_requested);
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
                                         "(grace period {} s)",
                                         options.grace_s));
      }
      drop_abandoned(active);
      if (!draining) intake(engine, queue, active, options.static_batches);
      const bool stop = draining && active.requests.empty() && engine.idle();
      if (!stop && engine.idle() && queue.size() == 0) {
        queue.wait(std::chrono::milliseconds(20));
        if (seconds_between(last_step, Clock::now()) < options.heartbeat_s) continue;
      }
      const bool flush = seconds_between(last_flush, Clock::now()) >= options.metrics_window_s;
      watchdog.step_begins();
      const StepStats st = engine.step(sink, stop, flush);
      watchdog.step_ends();
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
