// Load and traffic metrics of a run, per MoE layer and step: the job-wide parallel::LayerLoad
// (tokens per expert and per rank, rows per rank, rows and bytes moved), its balancedness and
// max-vio; totals over the run; time per phase, max and mean over ranks. Collected locally per
// step; reduce() is the one reduction (parallel::sum_over_ranks) at the end of a run.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/load_stats.h"
#include "runtime/model/model.h"

namespace moe::runtime {

// One MoE layer of one step, summed over ranks.
struct LayerStepLoad {
  int64_t step = 0;
  std::string phase;  // "prefill" | "decode"
  int64_t layer = 0;
  parallel::LayerLoad load;
};

struct PhaseSummary {
  std::string name;
  double max_s = 0;   // slowest rank
  double mean_s = 0;  // mean over ranks
};

struct MetricsReport {
  int num_ranks = 1;
  std::vector<LayerStepLoad> loads;
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
  void add_step(const std::string& phase, const StepResult& step);
  // Collective: sums loads over ranks, max/mean of phase times. Same result on all ranks.
  // Phase times come from `instr` (which may wait for the device).
  MetricsReport reduce(parallel::Communicator& comm, Instrumentation& instr) const;

 private:
  std::vector<LayerStepLoad> local_;  // this rank's contribution
  int64_t num_steps_ = 0;
};

}  // namespace moe::runtime
