// Placement experiments (`moe-ep experiment`): placements x workloads x rank counts from one YAML
// file (schema in the README, "Placement experiments"), in two modes: `analyze` replays generated
// routing through the placement analysis (fit on one sample, measure on a held-out one), `run`
// runs `moe-ep run` per cell under a launcher and reads its --json. Results: results.md,
// results.csv, results.json in the output folder; bench/plot_experiment.py draws the PNGs.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/analysis/placement_analysis.h"
#include "runtime/io/routing_spec.h"

namespace moe::runtime {

struct ExperimentPlacement {
  std::string name;  // column label (default: the strategy's label)
  StrategySpec strategy;
};

struct ExperimentWorkload {
  std::string name;
  RoutingSpec routing;
  std::string routing_yaml;  // the routing mapping in YAML flow style (run mode: --set)
};

struct ExperimentConfig {
  std::string source;  // the file, for messages
  std::string name;
  std::string mode = "analyze";  // analyze | run
  std::string model;             // model YAML / config.json (shape: experts, top-k, layers)
  std::vector<int> ranks;
  std::vector<ExperimentPlacement> placements;
  std::vector<ExperimentWorkload> workloads;
  // analyze
  int64_t tokens = 32768;       // per sample: placements are fitted on one, measured on the next
  int64_t tokens_per_step = 0;  // rows per dispatch (and per routing step); 0: one batch
  int64_t max_layers = 0;       // only the first N MoE layers (0: all)
  // run
  std::string run_config;  // base run YAML; each workload's routing replaces workload.routing
  std::string launcher = "mpirun --allow-run-as-root --oversubscribe -np {ranks}";
  std::string hostfile;  // Open MPI hostfile for the launcher's {hostfile}; checked at load
  std::vector<std::string> sets;  // extra --set overrides for every run
  int64_t timeout_s = 1200;       // per run
};

// Reads and checks an experiment file; every error names the file, line and key.
ExperimentConfig load_experiment_config(const std::string& path);

struct ExperimentCell {
  std::string workload, routing, placement, strategy;
  std::optional<double> skew;  // zipf / drift exponent
  int ranks = 0;
  PlacementReport measured;            // analyze: held-out sample; run: from the run's JSON
  std::optional<PlacementReport> fit;  // analyze: the sample it was fitted on
  nlohmann::json phases;               // run: {name: {max_s, mean_s}}
  double seconds = 0;                  // wall time of the cell
  double analyze_seconds = 0;          // analyze: replaying the held-out sample alone
};

struct ExperimentResults {
  ExperimentConfig config;
  std::vector<ExperimentCell> cells;
  nlohmann::json to_json() const;
  std::string markdown() const;
  std::string csv() const;
};

// Runs every cell; `progress` gets one line per cell. `exe` is the moe-ep binary (run mode).
ExperimentResults run_experiment(const ExperimentConfig& config, const std::string& out_dir,
                                 const std::string& exe,
                                 const std::function<void(const std::string&)>& progress);

// Writes results.md, results.csv and results.json into out_dir.
void write_experiment_results(const ExperimentResults& results, const std::string& out_dir);

}  // namespace moe::runtime
