// Op costs from a hardware profile: roofline or measured-table GEMMs, bandwidth-bound copies,
// latency-plus-bandwidth exchanges split into intra- and inter-node peers.
#include "runtime/analysis/op_cost.h"

#include <algorithm>
#include <cmath>

#include "runtime/model/arithmetic.h"

namespace moe::runtime {
namespace {

double combine_roofline(const HardwareProfile& h, double weight_s, double flop_s) {
  return h.gemm_overlap == GemmOverlap::kSum ? weight_s + flop_s : std::max(weight_s, flop_s);
}

}  // namespace

double rank_compute_share(const HardwareProfile& h, int num_ranks, int threads) {
  const MeasuredComm* m = h.measured_for(num_ranks);
  const double scale = m != nullptr ? m->compute_scale : 1.0;
  if (!h.is_cpu()) return scale;
  const int local = std::max(1, std::min(num_ranks, priced_ranks_per_node(h, num_ranks)));
  const int t = threads > 0 ? threads : std::max(1, h.cores / local);
  return scale * t * std::min(1.0, static_cast<double>(h.cores) / (static_cast<double>(local) * t));
}

double table_gflops(const std::vector<std::pair<int64_t, double>>& t, double rows) {
  if (rows <= static_cast<double>(t.front().first)) return t.front().second;
  for (size_t i = 1; i < t.size(); ++i) {
    const double r1 = static_cast<double>(t[i].first);
    if (rows <= r1) {
      const double r0 = static_cast<double>(t[i - 1].first);
      const double f = std::log(rows / r0) / std::log(r1 / r0);
      return t[i - 1].second + f * (t[i].second - t[i - 1].second);
    }
  }
  return t.back().second;
}

double gemm_seconds(const HardwareProfile& h, double share, int64_t rows, int64_t in, int64_t out,
                    bool grouped) {
  if (rows <= 0 || in <= 0 || out <= 0) return 0;
  const double flops = 2.0 * static_cast<double>(rows) * in * out;
  const auto& table = grouped ? h.grouped_table : h.gemm_table;
  if (!table.empty()) {
    return flops / (table_gflops(table, static_cast<double>(rows)) * kGiga * share) +
           h.launch_overhead_us * kMicro;
  }
  const double gflops = grouped                    ? h.grouped_gemm_gflops
                        : rows < h.decode_rows_max ? h.decode_gemm_gflops
                                                   : h.prefill_gemm_gflops;
  const double flop_s = flops / (gflops * kGiga * share);
  const double weight_s =
      static_cast<double>(in) * out * kWeightBytes / (h.weight_read_gbps * kGiga * share);
  return combine_roofline(h, weight_s, flop_s) + h.launch_overhead_us * kMicro;
}

double memory_seconds(const HardwareProfile& h, double share, double bytes) {
  return bytes / (h.memory_bandwidth_gbps * kGiga * share) + h.launch_overhead_us * kMicro;
}

int priced_ranks_per_node(const HardwareProfile& h, int num_ranks) {
  const MeasuredComm* m = h.measured_for(num_ranks);
  if (m == nullptr) return h.ranks_per_node;
  return m->ranks_per_node > 0 ? m->ranks_per_node : num_ranks;
}

double collective_overhead_seconds(const HardwareProfile& h, int num_ranks, CollectiveScope scope) {
  const MeasuredComm* m = h.measured_for(num_ranks);
  if (m == nullptr) return h.collective_overhead_us * kMicro;
  const bool node = scope == CollectiveScope::kNode && m->node_collective_overhead_us >= 0;
  return (node ? m->node_collective_overhead_us : m->collective_overhead_us) * kMicro;
}

double collective_sync_seconds(const HardwareProfile& h, int num_ranks, CollectiveScope scope) {
  const MeasuredComm* m = h.measured_for(num_ranks);
  if (m == nullptr) return 0;
  const bool node = scope == CollectiveScope::kNode && m->node_sync_us >= 0;
  return (node ? m->node_sync_us : m->sync_us) * kMicro;
}

bool over_shared_arena(const HardwareProfile& h, int num_ranks, CollectiveScope scope) {
  return h.kind == "cpu" && num_ranks > 1 &&
         (scope == CollectiveScope::kNode || priced_ranks_per_node(h, num_ranks) >= num_ranks);
}

double exchange_seconds(const HardwareProfile& h, int num_ranks, int rank,
                        std::span<const double> send_bytes, std::span<const double> recv_bytes,
                        CollectiveScope scope) {
  if (num_ranks <= 1) return 0;
  if (over_shared_arena(h, num_ranks, scope))
    return collective_overhead_seconds(h, num_ranks, scope);
  const MeasuredComm* measured = h.measured_for(num_ranks);
  // A measured entry prices its own nodes (one node unless it was calibrated across several).
  const bool two_level = measured != nullptr && measured->ranks_per_node > 0;
  const LinkProfile intra = measured ? measured->link : h.intra_node;
  const LinkProfile inter =
      two_level ? measured->inter_link : (measured ? measured->link : h.inter_node);
  const int g = priced_ranks_per_node(h, num_ranks);
  const int node = rank / g;
  double send_intra = 0, recv_intra = 0, send_inter = 0, recv_inter = 0;
  int peers_intra = 0, peers_inter = 0;
  for (int p = 0; p < num_ranks; ++p) {
    if (p == rank) continue;
    const bool same = p / g == node;
    const double s = send_bytes[static_cast<size_t>(p)], r = recv_bytes[static_cast<size_t>(p)];
    if (s <= 0 && r <= 0) continue;
    (same ? send_intra : send_inter) += s;
    (same ? recv_intra : recv_inter) += r;
    ++(same ? peers_intra : peers_inter);
  }
  const double t_intra = peers_intra * intra.latency_us * kMicro +
                         std::max(send_intra, recv_intra) / (intra.bandwidth_gbps * kGiga);
  const double t_inter = peers_inter * inter.latency_us * kMicro +
                         std::max(send_inter, recv_inter) / (inter.bandwidth_gbps * kGiga);
  return collective_overhead_seconds(h, num_ranks, scope) + std::max(t_intra, t_inter);
}

}  // namespace moe::runtime
