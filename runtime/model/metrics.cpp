// Metrics: local accumulation per step, folded into job-wide totals by flush() (one reduction).
#include "runtime/model/metrics.h"

#include <fmt/format.h>

#include <algorithm>

#include "kernels/common/check.h"

namespace moe::runtime {

void BalanceStats::add(const parallel::LayerLoad& load) {
  const double bal = load.balancedness(), vio = load.max_violation();
  ++entries;
  sum_balancedness += bal;
  sum_max_vio += vio;
  min_balancedness = std::min(min_balancedness, bal);
  worst_max_vio = std::max(worst_max_vio, vio);
}

int MetricsCollector::phase_index(const std::string& phase) {
  const auto it = std::find(phase_names_.begin(), phase_names_.end(), phase);
  if (it != phase_names_.end()) return static_cast<int>(it - phase_names_.begin());
  phase_names_.push_back(phase);
  pending_steps_per_phase_.push_back(0);
  return static_cast<int>(phase_names_.size()) - 1;
}

void MetricsCollector::add_step(const std::string& phase, const StepResult& step) {
  const int p = phase_index(phase);
  for (size_t l = 0; l < step.loads.size(); ++l) {
    if (step.loads[l].tokens_per_expert.empty()) continue;  // dense layer
    pending_.push_back({p, static_cast<int64_t>(l), step.loads[l]});
  }
  ++pending_steps_;
  ++pending_steps_per_phase_[static_cast<size_t>(p)];
}

void MetricsCollector::flush(parallel::Communicator& comm) {
  std::vector<parallel::LayerLoad> local;
  local.reserve(pending_.size());
  for (const Pending& e : pending_) local.push_back(e.load);
  // Every rank ran the same steps and layers, so entries line up across ranks (checked).
  const std::vector<parallel::LayerLoad> summed = parallel::sum_over_ranks(comm, local);
  window_.clear();
  for (size_t i = 0; i < pending_.size(); ++i) {
    const Pending& e = pending_[i];
    balance_.add(summed[i]);
    const std::string& phase = phase_names_[static_cast<size_t>(e.phase)];
    auto total = std::find_if(totals_.begin(), totals_.end(), [&](const LayerTotal& t) {
      return t.phase == phase && t.layer == e.layer;
    });
    if (total == totals_.end()) total = totals_.insert(totals_.end(), {phase, e.layer, 0, {}});
    total->load += summed[i];
    total->max_collectives =
        std::max(total->max_collectives, summed[i].traffic.collectives / comm.size());
    auto win = std::find_if(window_.begin(), window_.end(),
                            [&](const LayerTotal& t) { return t.layer == e.layer; });
    if (win == window_.end()) win = window_.insert(window_.end(), {"window", e.layer, 0, {}});
    win->load += summed[i];
  }
  for (LayerTotal& t : totals_) {
    const size_t p = static_cast<size_t>(phase_index(t.phase));
    t.steps += pending_steps_per_phase_[p];
  }
  for (LayerTotal& w : window_) w.steps = pending_steps_;
  steps_total_ += pending_steps_;
  pending_.clear();
  pending_steps_ = 0;
  std::fill(pending_steps_per_phase_.begin(), pending_steps_per_phase_.end(), 0);
}

MetricsReport MetricsCollector::reduce(parallel::Communicator& comm, Instrumentation& instr) {
  flush(comm);
  const PhaseTimes& times = instr.times();
  MetricsReport r;
  r.num_ranks = comm.size();
  r.timing_method = instr.timing_method();
  r.layers = totals_;
  for (const LayerTotal& t : totals_) r.traffic += t.load.traffic;
  if (balance_.entries > 0) {
    r.mean_balancedness = balance_.sum_balancedness / static_cast<double>(balance_.entries);
    r.mean_max_vio = balance_.sum_max_vio / static_cast<double>(balance_.entries);
    r.min_balancedness = balance_.min_balancedness;
    r.worst_max_vio = balance_.worst_max_vio;
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
  for (const LayerTotal& l : layers) {
    by_phase[l.phase] = std::max<int64_t>(by_phase.value(l.phase, int64_t{0}), l.max_collectives);
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
      {"rows_sent_inter_node", traffic.rows_sent_inter_node},
      {"rows_sent_intra_node", traffic.rows_sent_remote - traffic.rows_sent_inter_node},
      {"bytes_sent_inter_node", traffic.bytes_sent_inter_node},
      {"bytes_sent_intra_node", traffic.bytes_sent_remote - traffic.bytes_sent_inter_node},
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
    for (const auto& l : layers) {
      arr.push_back({{"phase", l.phase},
                     {"steps", l.steps},
                     {"layer", l.layer},
                     {"tokens_per_expert", l.load.tokens_per_expert},
                     {"tokens_per_rank", l.load.tokens_per_rank},
                     {"rows_per_rank", l.load.rows_per_rank},
                     {"bytes_sent_remote", l.load.traffic.bytes_sent_remote},
                     {"row_bytes_sent_remote", l.load.traffic.row_bytes_sent_remote},
                     {"bytes_sent_inter_node", l.load.traffic.bytes_sent_inter_node},
                     {"collectives", l.load.traffic.collectives / num_ranks},
                     {"max_collectives_per_step", l.max_collectives},
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
