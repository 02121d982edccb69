// Load statistics: balance numbers and their reductions over ranks. Reductions pack everything
// into one all_reduce per call so a report costs one collective per layer, not one per vector.
#include "parallel/load_stats.h"

#include <algorithm>

#include "kernels/common/check.h"

namespace moe::parallel {
namespace {

void add_into(std::vector<int64_t>& dst, const std::vector<int64_t>& src, const char* what) {
  if (dst.empty()) {
    dst = src;
    return;
  }
  if (src.empty()) return;
  MOE_CHECK_AS("stats", dst.size() == src.size(), "LayerLoad +=: {} has {} vs {} entries", what,
               dst.size(), src.size());
  for (size_t i = 0; i < dst.size(); ++i) dst[i] += src[i];
}

}  // namespace

double balancedness(std::span<const int64_t> per_rank_load) {
  if (per_rank_load.empty()) return 1.0;
  int64_t total = 0, max = 0;
  for (int64_t v : per_rank_load) {
    total += v;
    max = std::max(max, v);
  }
  if (max == 0) return 1.0;
  const double mean = static_cast<double>(total) / static_cast<double>(per_rank_load.size());
  return mean / static_cast<double>(max);
}

double max_violation(std::span<const int64_t> per_expert_load) {
  if (per_expert_load.empty()) return 0.0;
  int64_t total = 0, max = 0;
  for (int64_t v : per_expert_load) {
    total += v;
    max = std::max(max, v);
  }
  if (total == 0) return 0.0;
  const double mean = static_cast<double>(total) / static_cast<double>(per_expert_load.size());
  return static_cast<double>(max) / mean - 1.0;
}

LayerLoad& LayerLoad::operator+=(const LayerLoad& o) {
  add_into(tokens_per_expert, o.tokens_per_expert, "tokens_per_expert");
  add_into(tokens_per_rank, o.tokens_per_rank, "tokens_per_rank");
  add_into(rows_per_rank, o.rows_per_rank, "rows_per_rank");
  return *this;
}

LayerLoad local_layer_load(const DispatchLayout& layout) {
  LayerLoad l;
  l.tokens_per_expert = layout.expert_tokens;
  l.tokens_per_rank = layout.pairs_per_rank;
  l.rows_per_rank = layout.send_counts;
  return l;
}

LayerLoad sum_over_ranks(Communicator& comm, const LayerLoad& local) {
  const size_t ne = local.tokens_per_expert.size();
  const size_t nr = local.tokens_per_rank.size();
  const size_t nrows = local.rows_per_rank.size();
  std::vector<int64_t> packed;
  packed.reserve(ne + nr + nrows);
  packed.insert(packed.end(), local.tokens_per_expert.begin(), local.tokens_per_expert.end());
  packed.insert(packed.end(), local.tokens_per_rank.begin(), local.tokens_per_rank.end());
  packed.insert(packed.end(), local.rows_per_rank.begin(), local.rows_per_rank.end());
  comm.all_reduce<int64_t>(packed, ReduceOp::kSum);
  LayerLoad out;
  auto it = packed.begin();
  out.tokens_per_expert.assign(it, it + static_cast<std::ptrdiff_t>(ne));
  it += static_cast<std::ptrdiff_t>(ne);
  out.tokens_per_rank.assign(it, it + static_cast<std::ptrdiff_t>(nr));
  it += static_cast<std::ptrdiff_t>(nr);
  out.rows_per_rank.assign(it, packed.end());
  return out;
}

LayerLoad reduce_layer_load(Communicator& comm, const DispatchLayout& layout) {
  return sum_over_ranks(comm, local_layer_load(layout));
}

RankSpread spread_over_ranks(Communicator& comm, std::span<const double> values) {
  RankSpread s;
  s.max.assign(values.begin(), values.end());
  s.mean.assign(values.begin(), values.end());
  comm.all_reduce<double>(s.max, ReduceOp::kMax);
  comm.all_reduce<double>(s.mean, ReduceOp::kSum);
  for (double& m : s.mean) m /= comm.size();
  return s;
}

ExchangeStats sum_over_ranks(Communicator& comm, const ExchangeStats& local) {
  std::vector<int64_t> counters = {local.rows_sent_remote,
                                   local.rows_kept_local,
                                   local.pairs_remote,
                                   local.rows_received,
                                   local.bytes_sent_remote,
                                   local.bytes_kept_local,
                                   local.bytes_remote_without_dedup,
                                   local.pairs_received};
  std::vector<double> times = {local.layout_s, local.dispatch_s, local.combine_s};
  comm.all_reduce<int64_t>(counters, ReduceOp::kSum);
  comm.all_reduce<double>(times, ReduceOp::kMax);
  ExchangeStats s;
  s.rows_sent_remote = counters[0];
  s.rows_kept_local = counters[1];
  s.pairs_remote = counters[2];
  s.rows_received = counters[3];
  s.bytes_sent_remote = counters[4];
  s.bytes_kept_local = counters[5];
  s.bytes_remote_without_dedup = counters[6];
  s.pairs_received = counters[7];
  s.layout_s = times[0];
  s.dispatch_s = times[1];
  s.combine_s = times[2];
  return s;
}

}  // namespace moe::parallel
