// Metrics: local accumulation per step, one reduction over ranks at the end.
#include "runtime/model/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace moe::runtime {

void MetricsCollector::add_step(const std::string& phase, const StepResult& step) {
  for (size_t l = 0; l < step.loads.size(); ++l) {
    if (step.loads[l].tokens_per_expert.empty()) continue;  // dense layer
    local_.push_back({num_steps_, phase, static_cast<int64_t>(l), step.loads[l]});
  }
  ++num_steps_;
}

MetricsReport MetricsCollector::reduce(parallel::Communicator& comm, Instrumentation& instr) const {
  const PhaseTimes& times = instr.times();
  MetricsReport r;
  r.num_ranks = comm.size();
  r.timing_method = instr.timing_method();
  std::vector<parallel::LayerLoad> local;
  local.reserve(local_.size());
  for (const auto& e : local_) local.push_back(e.load);
  // Every rank ran the same steps and layers, so entries line up across ranks (checked).
  std::vector<parallel::LayerLoad> summed = parallel::sum_over_ranks(comm, local);

  double sum_bal = 0, sum_vio = 0;
  for (size_t i = 0; i < local_.size(); ++i) {
    LayerStepLoad entry{local_[i].step, local_[i].phase, local_[i].layer, std::move(summed[i])};
    const double bal = entry.load.balancedness(), vio = entry.load.max_violation();
    sum_bal += bal;
    sum_vio += vio;
    r.min_balancedness = std::min(r.min_balancedness, bal);
    r.worst_max_vio = std::max(r.worst_max_vio, vio);
    r.traffic += entry.load.traffic;
    r.loads.push_back(std::move(entry));
  }
  if (!r.loads.empty()) {
    r.mean_balancedness = sum_bal / static_cast<double>(r.loads.size());
    r.mean_max_vio = sum_vio / static_cast<double>(r.loads.size());
  }

  std::vector<double> values(times.seconds.begin(), times.seconds.end());
  values.push_back(times.total());
  const parallel::RankSpread spread = parallel::spread_over_ranks(comm, values);
  for (size_t i = 0; i < values.size(); ++i) {
    r.phases.push_back(
        {i < kPhaseNames.size() ? kPhaseNames[i] : "total", spread.max[i], spread.mean[i]});
  }
  return r;
}

nlohmann::json MetricsReport::max_collectives_per_layer() const {
  nlohmann::json by_phase = nlohmann::json::object();
  for (const auto& l : loads) {
    const int64_t n = l.load.traffic.collectives / num_ranks;
    by_phase[l.phase] = std::max<int64_t>(by_phase.value(l.phase, int64_t{0}), n);
  }
  return by_phase;
}

nlohmann::json MetricsReport::to_json(bool per_layer) const {
  nlohmann::json j;
  j["num_ranks"] = num_ranks;
  j["traffic"] = {
      {"bytes_sent_remote", traffic.bytes_sent_remote},
      {"bytes_kept_local", traffic.bytes_kept_local},
      {"bytes_remote_without_dedup", traffic.bytes_remote_without_dedup},
      {"bytes_saved_by_dedup", traffic.bytes_remote_without_dedup - traffic.bytes_sent_remote},
      {"rows_sent_remote", traffic.rows_sent_remote},
      {"rows_kept_local", traffic.rows_kept_local},
      {"pairs_remote", traffic.pairs_remote},
      {"row_bytes_sent_remote", traffic.row_bytes_sent_remote},
      // Every rank enters the same exchanges: the sum over ranks is N times one rank's.
      {"collectives", traffic.collectives / num_ranks},
      {"max_collectives_per_layer", max_collectives_per_layer()}};
  j["load"] = {{"mean_balancedness", mean_balancedness},
               {"min_balancedness", min_balancedness},
               {"mean_max_vio", mean_max_vio},
               {"worst_max_vio", worst_max_vio}};
  nlohmann::json ph = nlohmann::json::object();
  for (const auto& p : phases) ph[p.name] = {{"max_s", p.max_s}, {"mean_s", p.mean_s}};
  j["phases"] = ph;
  j["timing_method"] = timing_method;
  if (per_layer) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& l : loads) {
      arr.push_back({{"step", l.step},
                     {"phase", l.phase},
                     {"layer", l.layer},
                     {"tokens_per_expert", l.load.tokens_per_expert},
                     {"tokens_per_rank", l.load.tokens_per_rank},
                     {"rows_per_rank", l.load.rows_per_rank},
                     {"bytes_sent_remote", l.load.traffic.bytes_sent_remote},
                     {"row_bytes_sent_remote", l.load.traffic.row_bytes_sent_remote},
                     {"collectives", l.load.traffic.collectives / num_ranks},
                     {"balancedness", l.load.balancedness()},
                     {"max_vio", l.load.max_violation()}});
    }
    j["layers"] = arr;
  }
  return j;
}

std::string MetricsReport::summary() const {
  std::string s;
  s += fmt::format(
      "expert load   balancedness mean {:.3f} min {:.3f}   max-vio mean {:.3f} worst {:.3f}\n",
      mean_balancedness, min_balancedness, mean_max_vio, worst_max_vio);
  const double saved =
      traffic.bytes_remote_without_dedup > 0
          ? 100.0 * (1.0 - static_cast<double>(traffic.bytes_sent_remote) /
                               static_cast<double>(traffic.bytes_remote_without_dedup))
          : 0.0;
  s += fmt::format(
      "traffic       {:.3f} MB across ranks, {:.3f} MB kept local; one row per (token, expert) "
      "would send {:.3f} MB (dedup saved {:.1f}%)\n",
      traffic.bytes_sent_remote / 1e6, traffic.bytes_kept_local / 1e6,
      traffic.bytes_remote_without_dedup / 1e6, saved);
  s += fmt::format("{:<12} {:>12} {:>12}   ({})\n", "phase", "max s", "mean s", timing_method);
  for (const auto& p : phases) {
    s += fmt::format("{:<12} {:>12.6f} {:>12.6f}\n", p.name, p.max_s, p.mean_s);
  }
  return s;
}

}  // namespace moe::runtime
