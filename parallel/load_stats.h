// Load and traffic of expert parallelism, one MoE layer at a time: (token, expert) pairs per
// expert and per rank, deduplicated rows per rank, rows and bytes moved; the two balance numbers
// the reports print; and the one reduction over ranks every report uses. The scalar helpers are
// pure; the reductions are collectives (one all_reduce per call), so every rank calls them in step.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/dispatch_layout.h"

namespace moe::parallel {

// mean / max of per-rank loads: 1.0 is perfect balance; 1.0 when every load is zero.
double balancedness(std::span<const int64_t> per_rank_load);
// max / mean - 1 of per-expert loads: 0.0 is perfect balance; 0.0 when every load is zero.
double max_violation(std::span<const int64_t> per_expert_load);

// One MoE layer's load and traffic: this rank's contribution (local_layer_load), or the whole
// job's (sum_over_ranks). Counts are (token, expert) pairs unless named rows.
struct LayerLoad {
  std::vector<int64_t> tokens_per_expert;  // [E] pairs routed to each logical expert
  std::vector<int64_t> tokens_per_rank;    // [N] pairs computed by each rank (its expert work)
  std::vector<int64_t> rows_per_rank;      // [N] deduplicated rows each rank receives
  ExchangeStats traffic;                   // rows and bytes moved by dispatch + combine

  double balancedness() const { return parallel::balancedness(tokens_per_rank); }
  double max_violation() const { return parallel::max_violation(tokens_per_expert); }
  // Element-wise sum (e.g. over steps); an empty side takes the other's shape.
  LayerLoad& operator+=(const LayerLoad& o);
};

// This rank's contribution: the pairs and rows its own tokens send, and the traffic it saw.
LayerLoad local_layer_load(const DispatchLayout& layout, const ExchangeStats& traffic = {});
// Element-wise sums of every rank's loads, all layers in one all_reduce (collective; every rank
// passes the same number of loads with the same shapes, checked).
std::vector<LayerLoad> sum_over_ranks(Communicator& comm, const std::vector<LayerLoad>& local);

// Max and mean over ranks of per-rank values (e.g. phase times), element-wise. Collective.
struct RankSpread {
  std::vector<double> max;
  std::vector<double> mean;
};
RankSpread spread_over_ranks(Communicator& comm, std::span<const double> values);

}  // namespace moe::parallel
