// Load and traffic metrics of a run, per MoE layer: the job-wide parallel::LayerLoad (tokens per
// expert and per rank, rows per rank, rows and bytes moved), its balancedness and max-vio. Steps
// are collected locally and folded in by flush(), the one reduction (parallel::sum_over_ranks),
// into running totals per phase and layer, running balance statistics and the latest window (the
// steps of the last flush); memory stays bounded however long the run. Time per phase, max and
// mean over ranks, comes with reduce() at the end.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/load_stats.h"
#include "runtime/model/model.h"

namespace moe::runtime {

// One MoE layer summed over the steps of one phase (or of a window) and over ranks.
struct LayerTotal {
  std::string phase;  // "prefill" | "decode" (a window: "window")
  int64_t layer = 0;
  int64_t steps = 0;
  parallel::LayerLoad load;
  int64_t max_collectives = 0;  // the most exchanges one rank entered in one step of this layer
};

struct PhaseSummary {
  std::string name;
  double max_s = 0;   // slowest rank
  double mean_s = 0;  // mean over ranks
};

// Balance statistics over (step, MoE layer) entries, each entry job-wide.
struct BalanceStats {
  int64_t entries = 0;
  double sum_balancedness = 0, min_balancedness = 1.0;
  double sum_max_vio = 0, worst_max_vio = 0;
  void add(const parallel::LayerLoad& load);
};

struct MetricsReport {
  int num_ranks = 1;
  std::vector<LayerTotal> layers;   // per (phase, MoE layer), phases in order of appearance
  parallel::ExchangeStats traffic;  // summed over layers, steps and ranks
  double mean_balancedness = 1.0, min_balancedness = 1.0;
  double mean_max_vio = 0.0, worst_max_vio = 0.0;
  std::vector<PhaseSummary> phases;
  std::string timing_method;  // how phase times were taken (kernels/phase_timer.h)

  nlohmann::json to_json(bool per_layer) const;
  // {phase: the most exchanges one rank entered in one MoE layer of one step of that phase}
  // ("collectives" of a layer: dispatch, spill when a message outgrew its capacity, combine;
  // two of each with --overlap, one per micro-batch).
  nlohmann::json max_collectives_per_layer() const;
  std::string summary() const;  // human table (rank 0 prints it)
};

class MetricsCollector {
 public:
  // Local steps are flushed at the latest every `max_pending_steps` steps (the engine does it).
  explicit MetricsCollector(int64_t max_pending_steps = 1024)
      : max_pending_steps_(max_pending_steps) {}

  void add_step(const std::string& phase, const StepResult& step);  // local
  bool window_full() const { return pending_steps_ >= max_pending_steps_; }
  // Collective (every rank at the same step): folds the pending steps into the totals and makes
  // them the latest window.
  void flush(parallel::Communicator& comm);
  // Per MoE layer, summed over the steps of the latest flush (the same on every rank).
  const std::vector<LayerTotal>& window() const { return window_; }
  int64_t steps_total() const { return steps_total_; }
  // Collective: flush, then the run's totals, max/mean of phase times. Same result on all ranks.
  // Phase times come from `instr` (which may wait for the device).
  MetricsReport reduce(parallel::Communicator& comm, Instrumentation& instr);

 private:
  struct Pending {
    int phase = 0;  // index into phase_names_
    int64_t layer = 0;
    parallel::LayerLoad load;  // this rank's contribution
  };
  int phase_index(const std::string& phase);

  int64_t max_pending_steps_;
  std::vector<std::string> phase_names_;
  std::vector<Pending> pending_;
  int64_t pending_steps_ = 0;
  std::vector<int64_t> pending_steps_per_phase_;
  std::vector<LayerTotal> totals_;  // job-wide, per (phase, layer)
  std::vector<LayerTotal> window_;
  BalanceStats balance_;
  int64_t steps_total_ = 0;
};

}  // namespace moe::runtime
