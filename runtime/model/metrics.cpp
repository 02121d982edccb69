// Metrics: local accumulation per step, one all_reduce per quantity at the end.
#include "runtime/model/metrics.h"

#include <fmt/format.h>

#include <algorithm>

#include "kernels/common/check.h"
#include "parallel/load_stats.h"

namespace moe::runtime {

MetricsCollector::MetricsCollector(int64_t num_layers, int64_t num_experts, int num_ranks)
    : num_layers_(num_layers), num_experts_(num_experts), num_ranks_(num_ranks) {}

void MetricsCollector::add_step(const std::string& phase, const StepResult& step) {
  for (int64_t l = 0; l < static_cast<int64_t>(step.traffic.size()); ++l) {
    const LayerTraffic& t = step.traffic[static_cast<size_t>(l)];
    if (t.tokens_per_expert.empty()) continue;  // dense layer
    entries_.push_back({num_steps_, phase, l});
    counts_.insert(counts_.end(), t.tokens_per_expert.begin(), t.tokens_per_expert.end());
    counts_.insert(counts_.end(), t.pairs_per_rank.begin(), t.pairs_per_rank.end());
    bytes_sent_remote_ += t.exchange.bytes_sent_remote;
    bytes_kept_local_ += t.exchange.bytes_kept_local;
    bytes_without_dedup_ += t.exchange.bytes_remote_without_dedup;
    rows_sent_remote_ += t.exchange.rows_sent_remote;
    pairs_remote_ += t.exchange.pairs_remote;
  }
  ++num_steps_;
}

MetricsReport MetricsCollector::reduce(parallel::Communicator& comm,
                                       const PhaseTimes& times) const {
  MetricsReport r;
  r.num_ranks = num_ranks_;
  // Every rank ran the same steps and layers, so entries_ line up across ranks.
  std::vector<int64_t> counts = counts_;
  int64_t n = static_cast<int64_t>(counts.size());
  std::vector<int64_t> sizes{n};
  comm.all_reduce<int64_t>(sizes, parallel::ReduceOp::kMax);
  MOE_CHECK(sizes[0] == n, "metrics: ranks recorded different numbers of layer steps");
  if (!counts.empty()) comm.all_reduce<int64_t>(counts, parallel::ReduceOp::kSum);
  std::vector<int64_t> bytes{bytes_sent_remote_, bytes_kept_local_, bytes_without_dedup_,
                             rows_sent_remote_, pairs_remote_};
  comm.all_reduce<int64_t>(bytes, parallel::ReduceOp::kSum);
  r.bytes_sent_remote = bytes[0];
  r.bytes_kept_local = bytes[1];
  r.bytes_remote_without_dedup = bytes[2];
  r.rows_sent_remote = bytes[3];
  r.pairs_remote = bytes[4];

  const size_t stride = static_cast<size_t>(num_experts_ + num_ranks_);
  double sum_bal = 0, sum_vio = 0;
  r.min_balancedness = 1.0;
  r.worst_max_vio = 0.0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    LayerStepLoad load;
    load.step = entries_[i].step;
    load.phase = entries_[i].phase;
    load.layer = entries_[i].layer;
    auto begin = counts.begin() + static_cast<std::ptrdiff_t>(i * stride);
    load.tokens_per_expert.assign(begin, begin + num_experts_);
    load.tokens_per_rank.assign(begin + num_experts_, begin + static_cast<std::ptrdiff_t>(stride));
    load.balancedness = parallel::balancedness(load.tokens_per_rank);
    load.max_vio = parallel::max_violation(load.tokens_per_expert);
    sum_bal += load.balancedness;
    sum_vio += load.max_vio;
    r.min_balancedness = std::min(r.min_balancedness, load.balancedness);
    r.worst_max_vio = std::max(r.worst_max_vio, load.max_vio);
    r.loads.push_back(std::move(load));
  }
  if (!entries_.empty()) {
    r.mean_balancedness = sum_bal / static_cast<double>(entries_.size());
    r.mean_max_vio = sum_vio / static_cast<double>(entries_.size());
  }

  const std::vector<std::pair<std::string, double>> phases = {
      {"embed", times.embed},         {"attention", times.attention}, {"router", times.router},
      {"layout", times.layout},       {"dispatch", times.dispatch},   {"expert", times.expert},
      {"combine", times.combine},     {"dense_mlp", times.dense_mlp}, {"lm_head", times.lm_head},
      {"total", times.total()}};
  std::vector<double> values;
  for (const auto& p : phases) values.push_back(p.second);
  const parallel::RankSpread spread = parallel::spread_over_ranks(comm, values);
  for (size_t i = 0; i < phases.size(); ++i) {
    r.phases.push_back({phases[i].first, spread.max[i], spread.mean[i]});
  }
  return r;
}

nlohmann::json MetricsReport::to_json(bool per_layer) const {
  nlohmann::json j;
  j["num_ranks"] = num_ranks;
  j["traffic"] = {{"bytes_sent_remote", bytes_sent_remote},
                  {"bytes_kept_local", bytes_kept_local},
                  {"bytes_remote_without_dedup", bytes_remote_without_dedup},
                  {"bytes_saved_by_dedup", bytes_remote_without_dedup - bytes_sent_remote},
                  {"rows_sent_remote", rows_sent_remote},
                  {"pairs_remote", pairs_remote}};
  j["load"] = {{"mean_balancedness", mean_balancedness},
               {"min_balancedness", min_balancedness},
               {"mean_max_vio", mean_max_vio},
               {"worst_max_vio", worst_max_vio}};
  nlohmann::json ph = nlohmann::json::object();
  for (const auto& p : phases) ph[p.name] = {{"max_s", p.max_s}, {"mean_s", p.mean_s}};
  j["phases"] = ph;
  if (per_layer) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& l : loads) {
      arr.push_back({{"step", l.step},
                     {"phase", l.phase},
                     {"layer", l.layer},
                     {"tokens_per_expert", l.tokens_per_expert},
                     {"tokens_per_rank", l.tokens_per_rank},
                     {"balancedness", l.balancedness},
                     {"max_vio", l.max_vio}});
    }
    j["layers"] = arr;
  }
  return j;
}

std::string MetricsReport::summary() const {
  std::string s;
  s += fmt::format("expert load   balancedness mean {:.3f} min {:.3f}   max-vio mean {:.3f} worst {:.3f}\n",
                   mean_balancedness, min_balancedness, mean_max_vio, worst_max_vio);
  s += fmt::format("traffic       {:.3f} MB across ranks, {:.3f} MB kept local; one row per (token, expert) "
                   "would send {:.3f} MB (dedup saved {:.1f}%)\n",
                   bytes_sent_remote / 1e6, bytes_kept_local / 1e6, bytes_remote_without_dedup / 1e6,
                   bytes_remote_without_dedup > 0
                       ? 100.0 * (1.0 - static_cast<double>(bytes_sent_remote) /
                                            static_cast<double>(bytes_remote_without_dedup))
                       : 0.0);
  s += fmt::format("{:<12} {:>12} {:>12}\n", "phase", "max s", "mean s");
  for (const auto& p : phases) s += fmt::format("{:<12} {:>12.6f} {:>12.6f}\n", p.name, p.max_s, p.mean_s);
  return s;
}

}  // namespace moe::runtime
