// Cost model: per rank and MoE layer, the routing's loads and traffic (through the dispatcher's
// own layout), then each op's time from the hardware profile (op_cost.h), then the slowest rank
// between the two synchronisations of a MoE layer (dispatch, combine).
#include "runtime/analysis/cost_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "kernels/common/check.h"
#include "parallel/dispatcher.h"
#include "runtime/analysis/layer_routing.h"
#include "runtime/analysis/placement_analysis.h"
#include "runtime/model/arithmetic.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::runtime {
namespace {

// The model's own router on synthetic weights spreads tokens close to evenly: modelled as
// uniform routing with the workload's seed.
RoutingSpec modelled_routing(const RoutingSpec& routing, uint64_t seed) {
  if (!routing.is_router()) return routing;
  RoutingSpec spec;
  spec.kind = "uniform";
  spec.seed = seed;
  spec.source = "router modelled as uniform";
  return spec;
}

// Each rank's time per phase in one step.
class RankPhases {
 public:
  explicit RankPhases(int num_ranks) : phase_(num_ranks, std::vector<double>(kNumPhases, 0.0)) {}
  void add(int r, Phase p, double v) { phase_[r][static_cast<size_t>(p)] += v; }
  double max_over_ranks(Phase p) const {
    double m = 0;
    for (const std::vector<double>& rank : phase_) m = std::max(m, rank[static_cast<size_t>(p)]);
    return m;
  }

 private:
  std::vector<std::vector<double>> phase_;  // [N][kNumPhases]
};

// The MoE layers a step simulates (at most CostOptions::max_layers, evenly spread); each stands
// for `weight` MoE layers.
struct LayerSample {
  std::vector<int> moe, dense, simulated;
  double weight = 0;
};

LayerSample sample_layers(const ModelConfig& c, int max_layers) {
  LayerSample out;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    (c.layer_is_moe(l) ? out.moe : out.dense).push_back(static_cast<int>(l));
  }
  out.simulated = out.moe;
  if (max_layers > 0 && static_cast<int>(out.simulated.size()) > max_layers) {
    out.simulated.clear();
    for (int i = 0; i < max_layers; ++i) {
      out.simulated.push_back(out.moe[static_cast<size_t>(i) * out.moe.size() / max_layers]);
    }
  }
  out.weight =
      out.simulated.empty() ? 0 : static_cast<double>(out.moe.size()) / out.simulated.size();
  return out;
}

// One rank's times in one MoE layer, by the op that spends them.
struct MoeRankTimes {
  double layout = 0, dispatch_host = 0, dispatch_comm = 0, expert = 0;
  double partial = 0, combine_comm = 0, final_sum = 0;
  // Node-first only: the proxy's work between the levels (its second layout, then packing and
  // grouping), the node's two exchanges, and the sum inside the node before the row goes back.
  double forward_layout = 0, forward_dispatch = 0, node_dispatch_comm = 0, node_combine_comm = 0;
  double node_sum = 0;
  double remote_bytes = 0;  // sent to other ranks
};

// One simulated MoE layer over all ranks.
struct MoeLayerCost {
  double critical_s = 0;    // the segments between synchronisations (4; node-first 8), slowest rank
  double balancedness = 1;  // mean / max pairs per rank
  double max_remote_bytes = 0;  // busiest rank
};

// Time of one step, phase by phase, per rank; then the critical path.
class StepModel {
 public:
  StepModel(const ModelConfig& c, const CostWorkload& w, const HardwareProfile& h, int num_ranks)
      : c_(c),
        s_(c),
        w_(w),
        h_(h),
        N_(num_ranks),
        share_(rank_compute_share(h, num_ranks, w.threads)),
        g_(std::max(1, std::min(num_ranks, priced_ranks_per_node(h, num_ranks)))),
        node_first_(num_ranks > 1 &&
                    w.exchange.value_or(num_ranks > g_ ? parallel::ExchangeKind::kHierarchical
                                                       : parallel::ExchangeKind::kFlat) ==
                        parallel::ExchangeKind::kHierarchical) {
    MOE_CHECK_AS("config", !node_first_ || N_ % g_ == 0,
                 "predict: the hierarchical exchange needs whole nodes, but {} ranks do not fill "
                 "nodes of {}",
                 N_, g_);
  }

  double share() const { return share_; }
  int ranks_per_node() const { return g_; }
  parallel::ExchangeKind exchange() const {
    return node_first_ ? parallel::ExchangeKind::kHierarchical : parallel::ExchangeKind::kFlat;
  }

  // Dense part of one layer on a rank: attention block (or nothing for 0 tokens).
  double attention(const RankSeqs& r) const {
    const int64_t T = r.tokens;
    if (T == 0) return 0;
    const double H = static_cast<double>(s_.hidden);
    double t = 0;
    t += gemm_seconds(h_, share_, T, s_.hidden, s_.q_width);
    t += 2 * gemm_seconds(h_, share_, T, s_.hidden, s_.kv_width);
    t += gemm_seconds(h_, share_, T, s_.q_width, s_.hidden);
    if (h_.rowops_ns_per_token > 0) {
      t += static_cast<double>(T) * h_.rowops_ns_per_token * 1e-9 / share_;
    } else {
      t += memory_seconds(h_, share_, 8.0 * T * H);                               // rmsnorm
      t += 2 * memory_seconds(h_, share_, 8.0 * T * (s_.q_width + s_.kv_width));  // norm, rope
      t += memory_seconds(h_, share_, 12.0 * T * H);                              // residual
      t += memory_seconds(h_, share_, 8.0 * T * H);                               // rmsnorm
    }
    // Scores and values over the cache: FLOPs from arithmetic.h, the cache read once, and a
    // fixed cost per sequence.
    double flops = 0, kv_bytes = 0;
    for (size_t i = 0; i < r.sequences.size(); ++i) {
      flops += attention_score_flops(c_, r.new_per_seq, r.past_len);
      kv_bytes += 2.0 * static_cast<double>(r.past_len + r.new_per_seq) * s_.kv_width * w_.kv_bytes;
    }
    t += flops / (h_.attention_gflops * kGiga * share_) +
         kv_bytes / (h_.memory_bandwidth_gbps * kGiga * share_) + h_.launch_overhead_us * kMicro +
         static_cast<double>(r.sequences.size()) * h_.attention_seq_us * kMicro / share_;
    return t;
  }

  double router(int64_t T) const {
    if (T == 0) return 0;
    const double logits = static_cast<double>(T) * s_.num_experts;
    return gemm_seconds(h_, share_, T, s_.hidden, s_.num_experts) +
           memory_seconds(h_, share_, 4.0 * logits) + logits * h_.topk_ns_per_logit * 1e-9 / share_;
  }

  double host_pairs(double pairs) const { return pairs * h_.layout_ns_per_pair * 1e-9 / share_; }

  double dense_mlp(int64_t T) const {
    if (T == 0) return 0;
    return 2 * gemm_seconds(h_, share_, T, s_.hidden, s_.dense_inter) +
           gemm_seconds(h_, share_, T, s_.dense_inter, s_.hidden) +
           memory_seconds(h_, share_, 12.0 * T * s_.hidden);
  }

  // Grouped experts: per group its rows' gather, gate/up/down and SwiGLU; the fixed cost of an
  // op is paid once per projection (one grouped launch), not per group — a CPU profile's
  // per-group cost is inside its measured grouped_table rates.
  double expert(std::span<const double> slot_pairs) const {
    double t = 0;
    bool any = false;
    HardwareProfile no_launch = h_;
    no_launch.launch_overhead_us = 0;
    for (double p : slot_pairs) {
      if (p <= 0) continue;
      any = true;
      const int64_t rows = std::max<int64_t>(1, std::llround(p));
      t += memory_seconds(no_launch, share_, 8.0 * rows * s_.hidden);  // gather the group's rows
      // gate and up [rows, H] -> [rows, I], down [rows, I] -> [rows, H]
      t += 2 * gemm_seconds(no_launch, share_, rows, s_.hidden, s_.expert_inter, true);
      t += gemm_seconds(no_launch, share_, rows, s_.expert_inter, s_.hidden, true);
      t += memory_seconds(no_launch, share_, 12.0 * rows * s_.expert_inter);  // silu(gate) * up
    }
    return any ? t + 5 * h_.launch_overhead_us * kMicro : 0.0;
  }

  double lm_head(int64_t rows) const {
    if (rows == 0) return 0;
    return memory_seconds(h_, share_, 16.0 * rows * s_.hidden) +
           gemm_seconds(h_, share_, rows, s_.hidden, s_.vocab) +
           memory_seconds(h_, share_, 4.0 * rows * s_.vocab);
  }

  double embed(int64_t T) const {
    return T == 0 ? 0 : memory_seconds(h_, share_, 6.0 * T * s_.hidden);
  }

  // One step; with overlap (several ranks) as the Model's two micro-batches, each with its own
  // compute (half the rows read every weight again) and exchanges (fixed costs twice). At most
  // half the shorter of compute and exchange hides (a two-stage pipeline per layer); nothing on
  // a CPU profile, whose MPI shared-memory copies run on the cores that compute.
  StepCost run_step(const SyntheticRouting& routing, const parallel::Placement& placement,
                    const std::vector<RankSeqs>& ranks, int64_t step_index,
                    int64_t logit_rows_per_seq, const CostOptions& o) const {
    if (!w_.overlap || N_ == 1)
      return step(routing, placement, ranks, step_index, logit_rows_per_seq, o);
    std::vector<RankSeqs> halves[2] = {ranks, ranks};
    for (size_t r = 0; r < ranks.size(); ++r) {
      const std::vector<int64_t>& seqs = ranks[r].sequences;
      const auto split = static_cast<std::ptrdiff_t>((seqs.size() + 1) / 2);
      halves[0][r].sequences.assign(seqs.begin(), seqs.begin() + split);
      halves[1][r].sequences.assign(seqs.begin() + split, seqs.end());
      for (std::vector<RankSeqs>& h : halves) {
        h[r].tokens = static_cast<int64_t>(h[r].sequences.size()) * h[r].new_per_seq;
      }
    }
    StepCost out = step(routing, placement, halves[0], step_index, logit_rows_per_seq, o);
    const StepCost second = step(routing, placement, halves[1], step_index, logit_rows_per_seq, o);
    out.total_s += second.total_s;
    for (int p = 0; p < kNumPhases; ++p) out.phase_s[p] += second.phase_s[p];
    out.tokens += second.tokens;
    out.balancedness = (out.balancedness + second.balancedness) / 2;
    out.remote_rows_per_token = (out.remote_rows_per_token + second.remote_rows_per_token) / 2;
    out.inter_node_rows_per_token =
        (out.inter_node_rows_per_token + second.inter_node_rows_per_token) / 2;
    out.intra_node_rows_per_token =
        (out.intra_node_rows_per_token + second.intra_node_rows_per_token) / 2;
    out.inter_node_bytes += second.inter_node_bytes;
    out.max_remote_bytes = std::max(out.max_remote_bytes, second.max_remote_bytes);
    out.sampled = out.sampled || second.sampled;
    const double comm = out.phase_s[static_cast<int>(Phase::kDispatch)] +
                        out.phase_s[static_cast<int>(Phase::kCombine)];
    if (!h_.is_cpu()) out.total_s -= 0.5 * std::min(comm, out.total_s - comm);
    return out;
  }

  // One step over all ranks, one batch.
  StepCost step(const SyntheticRouting& routing, const parallel::Placement& placement,
                const std::vector<RankSeqs>& ranks, int64_t step_index, int64_t logit_rows_per_seq,
                const CostOptions& o) const {
    StepCost out;
    int64_t total_tokens = 0;
    for (const RankSeqs& r : ranks) total_tokens += r.tokens;
    out.tokens = total_tokens;
    const int64_t stride =
        std::max<int64_t>(1, (total_tokens + o.max_routed_tokens - 1) / o.max_routed_tokens);
    out.sampled = stride > 1;

    RankPhases phases(N_);
    for (int r = 0; r < N_; ++r) phases.add(r, Phase::kEmbed, embed(ranks[r].tokens));
    double total = phases.max_over_ranks(Phase::kEmbed);

    // Which MoE layers to simulate; the others take their mean.
    const LayerSample layers = sample_layers(c_, o.max_layers);
    std::vector<double> attn(N_), rtr(N_);
    for (int r = 0; r < N_; ++r) {
      attn[r] = attention(ranks[r]);
      rtr[r] = router(ranks[r].tokens);
    }
    for (size_t i = 0; i < layers.dense.size(); ++i) total += dense_layer(ranks, attn, phases);

    double balance_sum = 0;
    LinkRows rows;  // over the MoE layers
    for (int l : layers.simulated) {
      const LayerRankLoad load =
          route_layer(routing, placement.layer(l), l, step_index, ranks, stride,
                      static_cast<int>(s_.top_k), node_first_ ? g_ : 0);
      const MoeLayerCost layer = moe_layer(load, ranks, attn, rtr, layers.weight, phases);
      const LinkRows layer_rows = link_rows(load, g_);
      rows.remote += layers.weight * layer_rows.remote;
      rows.inter_node += layers.weight * layer_rows.inter_node;
      rows.intra_node += layers.weight * layer_rows.intra_node;
      out.max_remote_bytes = std::max(out.max_remote_bytes, layer.max_remote_bytes);
      balance_sum += layer.balancedness;
      total += layers.weight * layer.critical_s;
    }
    out.balancedness = layers.simulated.empty() ? 1.0 : balance_sum / layers.simulated.size();
    const double per_token = total_tokens > 0 && !layers.moe.empty()
                                 ? 1.0 / static_cast<double>(total_tokens) / layers.moe.size()
                                 : 0.0;
    out.remote_rows_per_token = rows.remote * per_token;
    out.inter_node_rows_per_token = rows.inter_node * per_token;
    out.intra_node_rows_per_token = rows.intra_node * per_token;
    // Every row that crosses nodes goes out with its route entries and comes back once.
    out.inter_node_bytes =
        rows.inter_node * static_cast<double>(s_.hidden) *
            (w_.dispatch_row_bytes + w_.combine_row_bytes) +
        rows.inter_node * static_cast<double>(s_.top_k) * sizeof(parallel::RouteEntry);

    for (int r = 0; r < N_; ++r) {
      const int64_t rows = static_cast<int64_t>(ranks[r].sequences.size()) * logit_rows_per_seq;
      phases.add(r, Phase::kLmHead, lm_head(rows));
    }
    total += phases.max_over_ranks(Phase::kLmHead);
    out.total_s = total;
    for (int p = 0; p < kNumPhases; ++p) out.phase_s[p] = phases.max_over_ranks(Phase(p));
    return out;
  }

  // Dense layer: attention + MLP, no synchronisation inside; returns the slowest rank's time.
  double dense_layer(const std::vector<RankSeqs>& ranks, const std::vector<double>& attn,
                     RankPhases& phases) const {
    double m = 0;
    for (int r = 0; r < N_; ++r) {
      const double mlp = dense_mlp(ranks[r].tokens);
      phases.add(r, Phase::kAttention, attn[r]);
      phases.add(r, Phase::kDenseMlp, mlp);
      m = std::max(m, attn[r] + mlp);
    }
    return m;
  }

  // One simulated MoE layer: adds each rank's phases, weighted for the MoE layers it stands for.
  // Segments between synchronisations: the final sum of the previous layer through the dispatch's
  // host work, the dispatch exchange, the experts and partial sums, the combine exchange. The
  // node-first exchange adds the proxy's forwarding and the node's dispatch between the first
  // two, and the node's combine and sum between the last two.
  MoeLayerCost moe_layer(const LayerRankLoad& load, const std::vector<RankSeqs>& ranks,
                         const std::vector<double>& attn, const std::vector<double>& rtr,
                         double layer_weight, RankPhases& phases) const {
    MoeLayerCost out;
    std::array<double, 8> seg{};
    double max_pairs = 0, sum_pairs = 0;
    for (int r = 0; r < N_; ++r) {
      double recv_pairs = 0;
      for (double p : load.slot_pairs[r]) recv_pairs += p;
      max_pairs = std::max(max_pairs, recv_pairs);
      sum_pairs += recv_pairs;
      const MoeRankTimes t = moe_rank(load, r, ranks[r].tokens, recv_pairs);
      out.max_remote_bytes = std::max(out.max_remote_bytes, t.remote_bytes);
      phases.add(r, Phase::kAttention, layer_weight * attn[r]);
      phases.add(r, Phase::kRouter, layer_weight * rtr[r]);
      phases.add(r, Phase::kLayout, layer_weight * (t.layout + t.forward_layout));
      phases.add(r, Phase::kDispatch,
                 layer_weight * (t.dispatch_host + t.dispatch_comm + t.forward_dispatch +
                                 t.node_dispatch_comm));
      phases.add(r, Phase::kExpert, layer_weight * t.expert);
      phases.add(r, Phase::kCombine,
                 layer_weight *
                     (t.partial + t.node_combine_comm + t.node_sum + t.combine_comm + t.final_sum));
      const std::array<double, 8> mine = {
          t.final_sum + attn[r] + rtr[r] + t.layout + t.dispatch_host,
          t.dispatch_comm,
          t.forward_layout + t.forward_dispatch,
          t.node_dispatch_comm,
          t.expert + t.partial,
          t.node_combine_comm,
          t.node_sum,
          t.combine_comm};
      for (size_t i = 0; i < seg.size(); ++i) seg[i] = std::max(seg[i], mine[i]);
    }
    // Time-shared cores: the collectives that follow compute wait for descheduled ranks.
    const double sync = collective_sync_seconds(h_, N_, CollectiveScope::kJob);
    const double node_sync =
        node_first_ ? collective_sync_seconds(h_, N_, CollectiveScope::kNode) : 0.0;
    for (int r = 0; r < N_; ++r) {
      phases.add(r, Phase::kDispatch, layer_weight * (sync + node_sync));
      phases.add(r, Phase::kCombine, layer_weight * (sync + node_sync));
    }
    seg[1] += sync;
    seg[7] += sync;
    seg[3] += node_sync;
    seg[5] += node_sync;
    out.balancedness = max_pairs > 0 ? sum_pairs / N_ / max_pairs : 1.0;
    for (double v : seg) out.critical_s += v;
    return out;
  }

  // One exchange of rank r over `rows` [src][dst] (the flat rows, or one level of node-first):
  // the dispatch message (rows and their route entries; a message over its capacity adds the
  // spill exchange's fixed part, its bytes being the message's) and the rows back.
  struct LevelTimes {
    double sent_rows = 0, recv_rows = 0, own_rows = 0;
    double dispatch_comm = 0, combine_comm = 0, remote_bytes = 0;
  };
  LevelTimes exchange_level(const std::vector<std::vector<double>>& rows, int r,
                            CollectiveScope scope) const {
    const double out_row = static_cast<double>(s_.hidden) * w_.dispatch_row_bytes;
    const double back_row = static_cast<double>(s_.hidden) * w_.combine_row_bytes;
    const double routes = static_cast<double>(s_.top_k) * sizeof(parallel::RouteEntry);
    std::vector<double> send_msg(N_), recv_msg(N_), send_back(N_), recv_back(N_), cnt(N_);
    LevelTimes t;
    bool spill = false;
    const int64_t capacity = over_shared_arena(h_, N_, scope)
                                 ? parallel::Dispatcher::kSharedCapacityRows
                                 : w_.capacity_rows;
    for (int p = 0; p < N_; ++p) {
      t.sent_rows += rows[r][p];
      t.recv_rows += rows[p][r];
      const bool peer = scope == CollectiveScope::kJob || p / g_ == r / g_;
      if (p == r || !peer) continue;
      cnt[p] = 8.0;
      send_msg[p] = rows[r][p] * (out_row + routes);
      recv_msg[p] = rows[p][r] * (out_row + routes);
      send_back[p] = rows[p][r] * back_row;  // rows received go back
      recv_back[p] = rows[r][p] * back_row;
      t.remote_bytes += send_msg[p] + send_back[p];
      spill |= rows[r][p] > capacity || rows[p][r] > capacity;
    }
    t.own_rows = rows[r][r];
    t.dispatch_comm = exchange_seconds(h_, N_, r, send_msg, recv_msg, scope) +
                      (spill ? exchange_seconds(h_, N_, r, cnt, cnt, scope) : 0.0);
    t.combine_comm = exchange_seconds(h_, N_, r, send_back, recv_back, scope);
    return t;
  }

  // Rows packed straight into messages: read from the fp32 rows, or copied from their bf16 copy
  // for bf16 rows at the source (bf16 compute has one; a proxy forwards fp32 rows); the wire
  // type written.
  double pack_seconds(double rows, bool from_source) const {
    const double read = from_source && w_.dispatch_row_bytes == 2.0 ? 2.0 : 4.0;
    return rows > 0 ? memory_seconds(h_, share_, rows * (read + w_.dispatch_row_bytes) * s_.hidden)
                    : 0.0;
  }
  // The experts' rows summed per received row (`rows` rows, `pairs` pairs), or `rows` returned
  // rows added into `into` fp32 rows.
  double row_sum_seconds(double pairs, double rows) const {
    return memory_seconds(h_, share_, 4.0 * s_.hidden * (pairs + rows));
  }

  // Rank r's share of one MoE layer: `recv_pairs` (token, expert) pairs arrive for its experts;
  // `own_tokens` are its own. Flat: one exchange. Node-first: r is a source (its tokens to the
  // proxies of their nodes), a proxy (the rows of the sources with its local index, forwarded
  // inside its node) and a destination.
  MoeRankTimes moe_rank(const LayerRankLoad& load, int r, int64_t own_tokens,
                        double recv_pairs) const {
    const int k = static_cast<int>(s_.top_k);
    // x: the level rows leave their source by; y: the level they reach the experts by.
    const LevelTimes x =
        exchange_level(node_first_ ? load.node_rows : load.rows, r, CollectiveScope::kJob);
    const LevelTimes y =
        node_first_ ? exchange_level(load.forward_rows, r, CollectiveScope::kNode) : x;
    MoeRankTimes t;
    const double tokens = static_cast<double>(own_tokens);
    t.layout = host_pairs(tokens * k);
    t.dispatch_comm = x.dispatch_comm;
    const double grouping = host_pairs(recv_pairs + y.recv_rows * k);
    t.dispatch_host = pack_seconds(x.sent_rows, true) + (node_first_ ? 0.0 : grouping);
    if (node_first_) {
      t.remote_bytes = y.remote_bytes;
      // The proxy reads the received rows' routes, gathers the rows (one fp32 pass) and lays
      // them out for its node; packs them, and groups what the node sends it by slot.
      const double fwd = x.recv_rows;
      t.forward_layout = host_pairs(2 * fwd * k) +
                         (fwd > 0 ? memory_seconds(h_, share_, 8.0 * s_.hidden * fwd) : 0.0);
      t.forward_dispatch = pack_seconds(y.sent_rows, false) + grouping;
      t.node_dispatch_comm = y.dispatch_comm;
      t.node_combine_comm = y.combine_comm;
      // The node's rows back summed per forwarded row into zeroed fp32 rows, then those written
      // (wire type) as the first level's rows back.
      const double back_bytes = (4.0 + w_.combine_row_bytes) * static_cast<double>(s_.hidden);
      t.node_sum = fwd > 0 ? memory_seconds(h_, share_, 4.0 * s_.hidden * fwd) +
                                 row_sum_seconds(y.sent_rows, fwd) + host_pairs(y.sent_rows) +
                                 memory_seconds(h_, share_, (fwd - x.own_rows) * back_bytes)
                           : 0.0;
    }
    t.remote_bytes += x.remote_bytes;
    t.expert = expert(load.slot_pairs[r]);
    t.partial =
        y.recv_rows > 0 ? row_sum_seconds(recv_pairs, y.recv_rows) + host_pairs(recv_pairs) : 0;
    t.combine_comm = x.combine_comm;
    t.final_sum = tokens > 0 ? row_sum_seconds(x.sent_rows, tokens) + host_pairs(x.sent_rows) : 0;
    return t;
  }

 private:
  const ModelConfig& c_;
  ModelShapes s_;
  const CostWorkload& w_;
  const HardwareProfile& h_;
  int N_;
  double share_;
  int g_;            // ranks per node as priced
  bool node_first_;  // the node-first exchange
};

}  // namespace

CostPrediction predict_cost(const ModelConfig& config, const CostWorkload& w,
                            const parallel::Placement& placement, const HardwareProfile& hardware,
                            const CostOptions& options) {
  const int N = placement.num_ranks();
  MOE_CHECK_AS("config", w.num_sequences >= 1 && w.prompt_len >= 1 && w.decode_steps >= 1,
               "predict: the workload needs >= 1 sequence, prompt token and decode step (got {}, "
               "{}, {})",
               w.num_sequences, w.prompt_len, w.decode_steps);
  MOE_CHECK_AS("config", options.max_routed_tokens >= 1, "predict: max_routed_tokens must be >= 1");
  SyntheticRouting routing(modelled_routing(w.routing, w.seed), RoutingShape::of(config));
  if (w.routing.kind == "replay") {
    routing.set_prompt_lengths(
        std::vector<int64_t>(static_cast<size_t>(w.num_sequences), w.prompt_len));
  }
  const StepModel model(config, w, hardware, N);

  CostPrediction out;
  out.num_ranks = N;
  out.hardware = hardware.name;
  out.placement = placement.strategy();
  out.routing = w.routing.is_router() ? "router (modelled as uniform)" : w.routing.describe();
  out.compute_share = model.share();
  out.ranks_per_node = model.ranks_per_node();
  out.exchange = model.exchange();

  auto ranks_at = [&](int64_t new_per_seq, int64_t past) {
    std::vector<RankSeqs> ranks(static_cast<size_t>(N));
    for (int64_t i = 0; i < w.num_sequences; ++i) {
      RankSeqs& r = ranks[static_cast<size_t>(i % N)];
      r.sequences.push_back(i);
      r.tokens += new_per_seq;
    }
    for (RankSeqs& r : ranks) {
      r.new_per_seq = new_per_seq;
      r.past_len = past;
    }
    return ranks;
  };
  out.prefill = model.run_step(routing, placement, ranks_at(w.prompt_len, 0), 0, 1, options);

  // Timed decode steps are steps 1 .. decode_steps - 1 (the engine's first step is the prefill
  // and its last token needs no further step); step d appends one token after prompt + d - 1.
  out.timed_decode_steps = w.decode_steps - 1;
  const int64_t steps = std::max<int64_t>(1, out.timed_decode_steps);
  const int64_t sim = std::min<int64_t>(steps, std::max(1, options.max_decode_steps));
  StepCost mean;
  mean.balancedness = 0;
  for (int64_t i = 0; i < sim; ++i) {
    const int64_t d = 1 + i * steps / sim;
    const StepCost s =
        model.run_step(routing, placement, ranks_at(1, w.prompt_len + d - 1), d, 1, options);
    mean.total_s += s.total_s / sim;
    for (int p = 0; p < kNumPhases; ++p) mean.phase_s[p] += s.phase_s[p] / sim;
    mean.balancedness += s.balancedness / sim;
    mean.remote_rows_per_token += s.remote_rows_per_token / sim;
    mean.inter_node_rows_per_token += s.inter_node_rows_per_token / sim;
    mean.intra_node_rows_per_token += s.intra_node_rows_per_token / sim;
    mean.inter_node_bytes += s.inter_node_bytes / sim;
    mean.max_remote_bytes = std::max(mean.max_remote_bytes, s.max_remote_bytes);
    mean.tokens = s.tokens;
    mean.sampled = mean.sampled || s.sampled;
  }
  out.decode = mean;
  return out;
}

parallel::Placement make_cost_placement(const std::string& name, const ModelConfig& config,
                                        const RoutingSpec& routing, uint64_t seed, int num_ranks,
                                        int64_t fit_tokens) {
  const auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  const int E = static_cast<int>(config.num_experts);
  if (ends_with(".yaml") || ends_with(".yml")) {
    return parallel::Placement::build(parallel::load_placement_spec(name), config.moe_layers(), E,
                                      num_ranks);
  }
  if (name == "contiguous" || name == "round_robin") {
    parallel::PlacementSpec spec;
    spec.strategy = name;
    return parallel::Placement::build(spec, config.moe_layers(), E, num_ranks);
  }
  StrategySpec strategy;
  const size_t colon = name.find(':');
  strategy.name = name.substr(0, colon);
  if (strategy.name == "replicated") {
    strategy.redundant = num_ranks;
    if (colon != std::string::npos) {
      const std::string r = name.substr(colon + 1);
      MOE_CHECK_AS("config", !r.empty() && r.find_first_not_of("0123456789") == std::string::npos,
                   "--placement '{}': replicated:R needs a whole number of redundant slots", name);
      strategy.redundant = std::stoi(r);
    }
  } else {
    MOE_CHECK_AS("config", colon == std::string::npos,
                 "--placement '{}': only replicated takes a parameter (replicated:R)", name);
  }
  const auto& names = strategy_names();
  MOE_CHECK_AS("config", std::find(names.begin(), names.end(), strategy.name) != names.end(),
               "--placement '{}': not a placement YAML (.yaml) nor a strategy (known: {})", name,
               fmt::join(names, ", "));
  check_strategy(strategy, "--placement");
  const RoutingTrace trace =
      generate_trace(modelled_routing(routing, seed), config, std::max<int64_t>(1, fit_tokens));
  return placement_from_lists(fit_placement(trace, strategy, num_ranks), trace, num_ranks,
                              strategy.label());
}

}  // namespace moe::runtime
