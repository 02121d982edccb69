// Load and traffic metrics of a run: per layer and step, tokens per expert and per rank,
// balancedness (mean rank load / max rank load) and max-vio (max expert load / mean - 1); bytes
// sent across ranks vs kept local and what dedup saved; time per phase, max and mean over ranks.
// Collected locally per step; reduce() is one collective at the end of a run.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/model/model.h"

namespace moe::runtime {

struct LayerStepLoad {
  int64_t step = 0;
  std::string phase;  // "prefill" | "decode"
  int64_t layer = 0;
  std::vector<int64_t> tokens_per_expert;  // [E] (token, expert) pairs, all ranks
  std::vector<int64_t> tokens_per_rank;    // [N] pairs computed on each rank
  double balancedness = 1.0;
  double max_vio = 0.0;
};

struct PhaseSummary {
  std::string name;
  double max_s = 0;   // slowest rank
  double mean_s = 0;  // mean over ranks
};

struct MetricsReport {
  int num_ranks = 1;
  std::vector<LayerStepLoad> loads;
  int64_t bytes_sent_remote = 0;
  int64_t bytes_kept_local = 0;
  int64_t bytes_remote_without_dedup = 0;
  int64_t rows_sent_remote = 0;
  int64_t pairs_remote = 0;
  double mean_balancedness = 1.0, min_balancedness = 1.0;
  double mean_max_vio = 0.0, worst_max_vio = 0.0;
  std::vector<PhaseSummary> phases;

  nlohmann::json to_json(bool per_layer) const;
  std::string summary() const;  // human table (rank 0 prints it)
};

class MetricsCollector {
 public:
  MetricsCollector(int64_t num_layers, int64_t num_experts, int num_ranks);
  void add_step(const std::string& phase, const StepResult& step);
  // Collective: sums loads and bytes over ranks, max/mean of phase times. Same result on all ranks.
  MetricsReport reduce(parallel::Communicator& comm, const PhaseTimes& times) const;

 private:
  struct Entry {
    int64_t step;
    std::string phase;
    int64_t layer;
  };
  int64_t num_layers_, num_experts_;
  int num_ranks_;
  std::vector<Entry> entries_;
  std::vector<int64_t> counts_;  // per entry: [E tokens_per_expert][N pairs per rank]
  int64_t bytes_sent_remote_ = 0, bytes_kept_local_ = 0, bytes_without_dedup_ = 0,
          rows_sent_remote_ = 0, pairs_remote_ = 0;
  int64_t num_steps_ = 0;
};

}  // namespace moe::runtime
