// The cost model behind `moe-ep predict`: prefill time and mean decode step time, per phase, for
// a workload on N ranks under a placement and a hardware profile. Work comes from
// runtime/model/arithmetic.h (FLOPs) and the model's shapes; loads and traffic per rank come
// from the routing itself, replayed through the dispatcher's own layout (the same dedup and
// replica split as a run). Times are for the slowest rank, as the run report gives them.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "parallel/dispatcher.h"
#include "parallel/placement.h"
#include "runtime/analysis/hardware.h"
#include "runtime/analysis/op_cost.h"
#include "runtime/io/config.h"
#include "runtime/io/routing_spec.h"
#include "runtime/io/run_config.h"
#include "runtime/model/model.h"

namespace moe::runtime {

// What runs: the run config's workload, and what the run's backend makes of it. The engine
// prefills every sequence in one step, then runs decode_steps - 1 timed decode steps of one token
// per sequence; sequence i on rank i mod N. Routing kind "router" is modelled as uniform (see
// predict_cost).
struct CostWorkload : Workload {
  int threads = 0;   // CPU threads per rank (0: cores / ranks, as the runtime picks)
  int kv_bytes = 4;  // KV-cache element bytes: 4 on the CPU backend, 2 on CUDA
  // Bytes per hidden element of the rows on the wire, each way (parallel::resolve_wire: fp32
  // compute 4 / 4, bf16 compute 2 / 2, fp8 dispatch 1 + 4/128 / 2).
  double dispatch_row_bytes = 4, combine_row_bytes = 4;
  // Rows per peer of the fixed-capacity dispatch message; a rank sending more to some peer adds
  // the spill exchange (parallel::Dispatcher).
  int64_t capacity_rows = 256;
  bool overlap = false;  // --overlap on: two micro-batches per step (several ranks)
  // The exchange priced (parallel/dispatcher.h); unset: as the runtime picks it, hierarchical
  // (node-first) when the ranks span several nodes of priced_ranks_per_node (op_cost.h).
  std::optional<parallel::ExchangeKind> exchange = std::nullopt;
};

struct CostOptions {
  int64_t max_routed_tokens = 131072;  // tokens routed per layer and step; more are sampled
  int max_layers = 0;                  // MoE layers simulated (0: all); others take their mean
  int max_decode_steps = 4;            // decode steps simulated (evenly spread); mean is used
};

struct StepCost {
  std::array<double, kNumPhases> phase_s{};  // max over ranks of each phase
  double total_s = 0;                        // the step: slowest rank between synchronisations
  int64_t tokens = 0;                        // tokens in the step, whole job
  double balancedness = 1;                   // mean over layers of mean / max pairs per rank
  double remote_rows_per_token = 0;          // deduplicated rows sent to other ranks, per layer
  // The same rows by link (node-first: both levels' rows; the analysis's NodeTraffic).
  double inter_node_rows_per_token = 0, intra_node_rows_per_token = 0;
  double inter_node_bytes = 0;  // all ranks and MoE layers, dispatch + combine
  double max_remote_bytes = 0;  // one MoE layer, dispatch + combine, busiest rank
  bool sampled = false;         // routing sampled (max_routed_tokens)
};

struct CostPrediction {
  int num_ranks = 1;
  int ranks_per_node = 1;  // nodes as priced (priced_ranks_per_node)
  parallel::ExchangeKind exchange = parallel::ExchangeKind::kFlat;
  std::string hardware, placement, routing;
  double compute_share = 1;
  StepCost prefill, decode;  // decode: mean of one decode step
  int64_t timed_decode_steps = 0;

  double prefill_s() const { return prefill.total_s; }
  double decode_step_s() const { return decode.total_s; }
  nlohmann::json to_json() const;
  std::string format() const;  // human table
};

// Predicts the workload. The node-first exchange needs whole nodes (N a multiple of the ranks per
// node), else moe::Error("config"). Synthetic routing (uniform, zipf, ...) is replayed token by
// token, exactly as the run routes it; kind "router" (the model's own router on synthetic weights)
// is modelled as uniform routing with the workload's seed. `placement` must be built for num_ranks
// ranks.
CostPrediction predict_cost(const ModelConfig& config, const CostWorkload& workload,
                            const parallel::Placement& placement, const HardwareProfile& hardware,
                            const CostOptions& options = {});

}  // namespace moe::runtime

namespace moe::runtime {

// The placement `predict` evaluates: a placement YAML (path ending in .yaml/.yml), a built-in
// strategy (contiguous, round_robin), or a load-aware one fitted by the placement analysis
// (runtime/analysis/placement_analysis.h) on `fit_tokens` tokens of the workload's routing:
// load_balanced, replicated[:R] (R redundant slots per layer, default N), coactivation.
// Throws moe::Error("config") naming `name` when it is none of these.
parallel::Placement make_cost_placement(const std::string& name, const ModelConfig& config,
                                        const RoutingSpec& routing, uint64_t seed, int num_ranks,
                                        int64_t fit_tokens = 4096);

}  // namespace moe::runtime
