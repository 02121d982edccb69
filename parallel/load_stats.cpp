// Load statistics: balance numbers and the reduction over ranks. A reduction packs every layer's
// counts into one int64 vector, so a report costs one collective, not one per layer or vector.
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

// ExchangeStats counters in a fixed order, for packing.
constexpr int kTrafficCounters = 12;
void pack_traffic(const ExchangeStats& s, std::vector<int64_t>& out) {
  out.insert(out.end(), {s.rows_sent_remote, s.rows_kept_local, s.pairs_remote, s.rows_received,
                         s.bytes_sent_remote, s.bytes_kept_local, s.bytes_remote_without_dedup,
                         s.pairs_received, s.row_bytes_sent_remote, s.collectives,
                         s.rows_sent_inter_node, s.bytes_sent_inter_node});
}
ExchangeStats unpack_traffic(const int64_t* v) {
  ExchangeStats s;
  s.rows_sent_remote = v[0];
  s.rows_kept_local = v[1];
  s.pairs_remote = v[2];
  s.rows_received = v[3];
  s.bytes_sent_remote = v[4];
  s.bytes_kept_local = v[5];
  s.bytes_remote_without_dedup = v[6];
  s.pairs_received = v[7];
  s.row_bytes_sent_remote = v[8];
  s.collectives = v[9];
  s.rows_sent_inter_node = v[10];
  s.bytes_sent_inter_node = v[11];
  return s;
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
  traffic += o.traffic;
  return *this;
}

LayerLoad local_layer_load(const DispatchLayout& layout, const ExchangeStats& traffic) {
  LayerLoad l;
  l.tokens_per_expert = layout.expert_tokens;
  l.tokens_per_rank = layout.pairs_per_rank;
  l.rows_per_rank = layout.send_counts;
  l.traffic = traffic;
  return l;
}

std::vector<LayerLoad> sum_over_ranks(Communicator& comm, const std::vector<LayerLoad>& local) {
  // Shape header first, so ranks that disagree fail with a message instead of mixing counts.
  std::vector<int64_t> packed;
  int64_t shape_sum = 0;
  for (const LayerLoad& l : local) {
    shape_sum += static_cast<int64_t>(l.tokens_per_expert.size()) * 1000003 +
                 static_cast<int64_t>(l.tokens_per_rank.size()) * 1009 +
                 static_cast<int64_t>(l.rows_per_rank.size());
  }
  // Max and (negated) min in one all_reduce: every rank sees the same verdict, so all throw.
  const int64_t n = static_cast<int64_t>(local.size());
  std::vector<int64_t> header{n, shape_sum, -n, -shape_sum};
  comm.all_reduce<int64_t>(header, ReduceOp::kMax);
  MOE_CHECK_AS("stats", header[0] == -header[2] && header[1] == -header[3],
               "load report: ranks recorded different layer loads (between {} and {} layers)",
               -header[2], header[0]);
  for (const LayerLoad& l : local) {
    packed.insert(packed.end(), l.tokens_per_expert.begin(), l.tokens_per_expert.end());
    packed.insert(packed.end(), l.tokens_per_rank.begin(), l.tokens_per_rank.end());
    packed.insert(packed.end(), l.rows_per_rank.begin(), l.rows_per_rank.end());
    pack_traffic(l.traffic, packed);
  }
  if (!packed.empty()) comm.all_reduce<int64_t>(packed, ReduceOp::kSum);
  std::vector<LayerLoad> out(local.size());
  auto it = packed.begin();
  auto take = [&it](size_t n) {
    std::vector<int64_t> v(it, it + static_cast<std::ptrdiff_t>(n));
    it += static_cast<std::ptrdiff_t>(n);
    return v;
  };
  for (size_t i = 0; i < local.size(); ++i) {
    out[i].tokens_per_expert = take(local[i].tokens_per_expert.size());
    out[i].tokens_per_rank = take(local[i].tokens_per_rank.size());
    out[i].rows_per_rank = take(local[i].rows_per_rank.size());
    out[i].traffic = unpack_traffic(&*it);
    it += kTrafficCounters;
  }
  return out;
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

}  // namespace moe::parallel
