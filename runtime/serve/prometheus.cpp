// ServeMetrics: one mutex; render() writes each family with its # HELP and # TYPE lines.
#include "runtime/serve/prometheus.h"

#include <fmt/format.h>

namespace moe::runtime::serve {
namespace {

// Latency buckets in seconds: 1 ms .. 60 s.
std::vector<double> latency_bounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

void family(std::string& out, const std::string& name, const char* type, const std::string& help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string out;
  family(out, name, "histogram", help);
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name,
                     sum_, name, count_);
  return out;
}

ServeMetrics::ServeMetrics()
    : ttft_(latency_bounds()), tpot_(latency_bounds()), e2e_(latency_bounds()) {}

void ServeMetrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void ServeMetrics::count_tokens(int64_t prompt, int64_t completion) {
  std::lock_guard lock(mutex_);
  prompt_tokens_ += prompt;
  completion_tokens_ += completion;
}

void ServeMetrics::observe_latency(double ttft_s, double tpot_s, double e2e_s, bool has_tpot) {
  std::lock_guard lock(mutex_);
  ttft_.observe(ttft_s);
  if (has_tpot) tpot_.observe(tpot_s);
  e2e_.observe(e2e_s);
}

void ServeMetrics::set_gauges(const SchedulerGauges& g) {
  std::lock_guard lock(mutex_);
  gauges_ = g;
}

void ServeMetrics::set_window(int64_t steps, double seconds, std::vector<LayerWindow> layers) {
  std::lock_guard lock(mutex_);
  window_steps_ = steps;
  window_s_ = seconds;
  layers_ = std::move(layers);
}

std::string ServeMetrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  family(out, "moe_ep_requests_total", "counter", "Requests answered, by endpoint and status.");
  for (const auto& [key, n] : requests_) {
    out += fmt::format("moe_ep_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first,
                       key.second, n);
  }
  family(out, "moe_ep_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.");
  out += fmt::format("moe_ep_prompt_tokens_total {}\n", prompt_tokens_);
  family(out, "moe_ep_generation_tokens_total", "counter", "Tokens generated.");
  out += fmt::format("moe_ep_generation_tokens_total {}\n", completion_tokens_);
  out += ttft_.render("moe_ep_time_to_first_token_seconds",
                      "From the request's arrival to its first token.");
  out += tpot_.render("moe_ep_time_per_output_token_seconds",
                      "Mean time per output token after the first, per request.");
  out += e2e_.render("moe_ep_e2e_request_latency_seconds", "From arrival to the last token.");
  const std::pair<const char*, int64_t> gauges[] = {
      {"moe_ep_queue_length", gauges_.queued},
      {"moe_ep_running_sequences", gauges_.running},
      {"moe_ep_kv_slots_used", gauges_.kv_slots_used},
      {"moe_ep_kv_slots_total", gauges_.kv_slots_total}};
  for (const auto& [name, value] : gauges) {
    family(out, name, "gauge", "Scheduler state after the latest step.");
    out += fmt::format("{} {}\n", name, value);
  }
  family(out, "moe_ep_steps_total", "counter", "Model steps run.");
  out += fmt::format("moe_ep_steps_total {}\n", gauges_.steps_total);
  family(out, "moe_ep_steps_per_second", "gauge", "Steps per second over the latest window.");
  out += fmt::format("moe_ep_steps_per_second {}\n",
                     window_s_ > 0 ? static_cast<double>(window_steps_) / window_s_ : 0.0);
  family(out, "moe_ep_window_steps", "gauge", "Steps in the latest metrics window.");
  out += fmt::format("moe_ep_window_steps {}\n", window_steps_);
  family(out, "moe_ep_expert_balancedness", "gauge",
         "Mean over max (token, expert) pairs per rank, per MoE layer, latest window.");
  for (const LayerWindow& l : layers_) {
    out += fmt::format("moe_ep_expert_balancedness{{layer=\"{}\"}} {}\n", l.layer, l.balancedness);
  }
  family(out, "moe_ep_exchanged_bytes", "gauge",
         "Bytes sent to other ranks by dispatch and combine, per MoE layer, latest window.");
  for (const LayerWindow& l : layers_) {
    out += fmt::format("moe_ep_exchanged_bytes{{layer=\"{}\"}} {}\n", l.layer, l.bytes_sent_remote);
  }
  return out;
}

}  // namespace moe::runtime::serve
