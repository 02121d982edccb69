// Online rebalancing (a run config's `rebalance: {every, window, strategy, redundant}`): after
// every `every` steps, the expert loads of the last `window` steps (summed over ranks) fit a new
// placement per MoE layer with parallel/placement_strategies.h, and Model::apply_placement moves
// the expert weights that change rank. Every rank runs the same decisions from the same sums.
#pragma once

#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/io/run_config.h"
#include "runtime/model/metrics.h"
#include "runtime/model/model.h"

namespace moe::runtime {

struct RebalanceEvent {
  int64_t after_step = 0;          // the placement changed after this step
  int64_t window_first_step = 0;   // loads of steps window_first_step..after_step chose it
  double balancedness_before = 1;  // measured on the window (see measured_balancedness)
  double fitted_balancedness = 1;  // new placement on the window's loads (replicas share evenly)
  double balancedness_after = -1;  // measured on the steps after it up to the next event or the
                                   // end (-1: none ran)
  int64_t slots_per_layer = 0;     // expert slots of a MoE layer in the new placement
  int64_t experts_moved = 0;       // (layer, expert) slots filled over the communicator, all ranks
  int64_t bytes_moved = 0;         // their bf16 weight bytes, all ranks
  int64_t experts_kept = 0;        // slots whose rank already held the expert, all ranks
  double seconds = 0;              // fitting + moving, slowest rank (inside the step's time)
};

class Rebalancer {
 public:
  // Installs itself as the model's step observer; must outlive the model's steps.
  Rebalancer(const RebalanceConfig& config, Model& model, parallel::Communicator& comm);
  // Collective on the steps where it rebalances (every rank sees the same steps).
  void on_step(int64_t step, const StepResult& result);
  // Collective: measures the steps after the last rebalance (call once, after the last step).
  void finish();

  const RebalanceConfig& config() const { return config_; }
  const std::vector<RebalanceEvent>& events() const { return events_; }

  // Balancedness as measured in the window before each rebalance and over the steps after it up
  // to the next one or the end (null when none ran), beside the fitted figure and the bytes moved.
  nlohmann::json to_json() const;
  std::string summary() const;

 private:
  RebalanceConfig config_;
  Model& model_;
  parallel::Communicator& comm_;
  std::deque<std::vector<parallel::LayerLoad>> window_;  // this rank's loads, last `window` steps
  std::vector<parallel::LayerLoad> since_event_;  // this rank's loads since the last rebalance
  int64_t steps_since_event_ = 0;
  std::vector<RebalanceEvent> events_;
};

// Measured balancedness of job-wide loads summed over some steps: the mean over MoE layers of the
// balancedness of pairs per rank (-1 when no MoE layer has load entries).
double measured_balancedness(const std::vector<parallel::LayerLoad>& summed);

}  // namespace moe::runtime
