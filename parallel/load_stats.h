// Load statistics of expert parallelism: per-layer token counts per expert and per rank, summed
// over ranks, and the two balance numbers the reports print. The scalar helpers are pure; the
// reductions are collectives (one all_reduce each), so every rank must call them in step.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/dispatcher.h"

namespace moe::parallel {

// mean / max of per-rank loads: 1.0 is perfect balance; 1.0 when every load is zero.
double balancedness(std::span<const int64_t> per_rank_load);
// max / mean - 1 of per-expert loads: 0.0 is perfect balance; 0.0 when every load is zero.
double max_violation(std::span<const int64_t> per_expert_load);

// One MoE layer's load. Counts are (token, expert) pairs unless named rows.
struct LayerLoad {
  std::vector<int64_t> tokens_per_expert;  // [E] pairs routed to each logical expert
  std::vector<int64_t> tokens_per_rank;    // [N] pairs computed by each rank (its expert work)
  std::vector<int64_t> rows_per_rank;      // [N] deduplicated rows each rank receives

  double balancedness() const { return parallel::balancedness(tokens_per_rank); }
  double max_violation() const { return parallel::max_violation(tokens_per_expert); }
  // Element-wise sum (e.g. over steps); an empty side takes the other's shape.
  LayerLoad& operator+=(const LayerLoad& o);
};

// This rank's contribution: the pairs and rows its own tokens send.
LayerLoad local_layer_load(const DispatchLayout& layout);
// Element-wise sum of every rank's `local` (collective; all ranks must pass the same shape).
LayerLoad sum_over_ranks(Communicator& comm, const LayerLoad& local);
// sum_over_ranks(comm, local_layer_load(layout)).
LayerLoad reduce_layer_load(Communicator& comm, const DispatchLayout& layout);

// Max and mean over ranks of per-rank values (e.g. phase times), element-wise. Collective.
struct RankSpread {
  std::vector<double> max;
  std::vector<double> mean;
};
RankSpread spread_over_ranks(Communicator& comm, std::span<const double> values);

// Job-wide traffic: counters summed over ranks, phase times the maximum over ranks. Collective.
ExchangeStats sum_over_ranks(Communicator& comm, const ExchangeStats& local);

}  // namespace moe::parallel
