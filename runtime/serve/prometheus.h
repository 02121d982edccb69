// The server's /metrics in Prometheus' text exposition format (version 0.0.4): request and token
// counters, latency histograms (cumulative buckets), scheduler gauges, and per MoE layer the
// balancedness and bytes exchanged over the latest metrics window. Constant memory: histograms
// are bucket counts, layer figures are replaced at each window. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace moe::runtime::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v);
  // The metric's lines ("<name>_bucket{le=...}", _sum, _count).
  std::string render(const std::string& name, const std::string& help) const;
  int64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket (not cumulative); the last is +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

// Scheduler state as of the latest step (set by rank 0's loop).
struct SchedulerGauges {
  int64_t queued = 0;   // waiting for a KV slot
  int64_t running = 0;  // admitted sequences
  int64_t kv_slots_used = 0, kv_slots_total = 0;
  int64_t steps_total = 0;
};

// Per MoE layer over the latest window.
struct LayerWindow {
  int64_t layer = 0;
  double balancedness = 1;
  int64_t bytes_sent_remote = 0;
};

class ServeMetrics {
 public:
  ServeMetrics();
  void count_request(const std::string& endpoint, int status);
  void count_tokens(int64_t prompt, int64_t completion);
  void observe_latency(double ttft_s, double tpot_s, double e2e_s, bool has_tpot);
  void set_gauges(const SchedulerGauges& g);
  // The window the last metrics flush covered: `steps` steps in `seconds`.
  void set_window(int64_t steps, double seconds, std::vector<LayerWindow> layers);
  std::string render() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  Histogram ttft_, tpot_, e2e_;
  SchedulerGauges gauges_;
  int64_t window_steps_ = 0;
  double window_s_ = 0;
  std::vector<LayerWindow> layers_;
};

}  // namespace moe::runtime::serve
