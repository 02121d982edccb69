// Calibration probes. Each compute probe times a backend op at two or more sizes and fits
// time = fixed + per-unit x size by least squares, so launch and weight-conversion costs land in
// the intercept and the rate in the slope. Communicator probes use fixed repetition counts, so
// every rank makes the same calls.
#include "runtime/analysis/calibrate.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/cpu/host.h"
#include "kernels/expert_groups.h"
#include "parallel/dispatcher.h"
#include "parallel/placement.h"
#include "runtime/analysis/cost_model.h"
#include "runtime/model/arithmetic.h"
#include "runtime/model/model.h"

namespace moe::runtime {
namespace {

using Clock = std::chrono::steady_clock;

// Seconds per call of fn: one warm-up, then repeats until min_s has passed (at least 2 calls);
// the best of three such rounds (least disturbed by other processes).
template <class F>
double time_call(F&& fn, double min_s = 0.05) {
  fn();
  double best = 1e30;
  for (int round = 0; round < 3; ++round) {
    int64_t calls = 0;
    const auto t0 = Clock::now();
    double elapsed = 0;
    do {
      fn();
      ++calls;
      elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (elapsed < min_s || calls < 2);
    best = std::min(best, elapsed / static_cast<double>(calls));
  }
  return best;
}

std::vector<bf16> random_bf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  std::vector<bf16> v(n);
  for (auto& x : v) x = float_to_bf16(u(rng));
  return v;
}

template <class T>
kernels::Buffer<T> upload(kernels::Backend& b, const std::vector<T>& host) {
  kernels::Buffer<T> buf(b, host.size());
  b.upload(buf.data(), host.data(), host.size() * sizeof(T));
  return buf;
}

// The compute probes of one backend at one model's shapes: each fills its part of the profile
// and records its raw samples.
struct ComputeProbes {
  kernels::Backend& be;
  const ModelConfig& c;
  const ModelShapes s;
  HardwareProfile& h;
  nlohmann::json& samples;

  void linear();
  void grouped();
  void attention();
  void rowops();
  void router();
  void memory();
  void layout();
};

// Dense linear at every row count from decode to prefill sizes: the rate table (the CPU backend
// converts bf16 weights per call and takes other code paths at 1 and 2-3 rows, so the measured
// time per row count is what the model uses).
void ComputeProbes::linear() {
  const int64_t H = s.hidden;
  const int64_t out = std::max<int64_t>(s.q_width, H);
  const int64_t max_rows = 512;
  kernels::Buffer<float> x = upload(be, std::vector<float>(max_rows * std::max(H, out), 0.01f));
  kernels::Buffer<float> y(be, static_cast<size_t>(max_rows * std::max(H, out)));
  // Weights rotate over >= 64 MiB of matrices so every call reads them from memory, as a forward
  // does (it streams each layer's weights once); one matrix would stay in cache and flatter the
  // small-row rates.
  const int64_t weight_bytes_one = out * H * kWeightBytes;
  const int64_t num_w = std::clamp<int64_t>((64ll << 20) / weight_bytes_one + 1, 1, 256);
  kernels::Buffer<bf16> w = upload(be, random_bf16(static_cast<size_t>(num_w * out * H), 1));
  int64_t next_w = 0;
  const auto weight = [&] { return w.data() + (next_w++ % num_w) * out * H; };
  const double flops_per_row = 2.0 * H * out;
  h.gemm_table.clear();
  for (int64_t rows : {1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 512}) {
    const double t = time_call([&] { be.linear(x.data(), weight(), rows, H, out, y.data()); });
    h.gemm_table.emplace_back(rows, flops_per_row * rows / t * 1e-9);
    samples["linear"].push_back({{"rows", rows}, {"in", H}, {"out", out}, {"s", t}});
    if (rows == 1) h.weight_read_gbps = static_cast<double>(H) * out * kWeightBytes / t * 1e-9;
  }
  h.decode_gemm_gflops = table_gflops(h.gemm_table, 8);
  h.prefill_gemm_gflops = table_gflops(h.gemm_table, 512);
  h.decode_rows_max = 64;
  h.gemm_overlap = GemmOverlap::kSum;
}

// Grouped experts: E groups of g rows each, per rows-per-expert count.
void ComputeProbes::grouped() {
  const int64_t H = s.hidden, I = s.expert_inter, E = s.num_experts;
  std::vector<bf16> host = random_bf16(static_cast<size_t>(E * 3 * H * I), 2);
  kernels::Buffer<bf16> ew = upload(be, host);
  const int64_t max_g = 64;
  kernels::Buffer<float> ex = upload(be, std::vector<float>(E * max_g * H, 0.01f));
  // The outputs in the compute dtype, as MoeLayer stores them (bf16 compute: bf16 rows).
  const bool bf16_out = be.compute_dtype() == kernels::ComputeDtype::kBF16;
  kernels::Buffer<float> eo(be, bf16_out ? 1 : static_cast<size_t>(E * max_g * H));
  kernels::Buffer<bf16> eo_bf16(be, bf16_out ? static_cast<size_t>(E * max_g * H) : 1);
  h.grouped_table.clear();
  for (int64_t g : {1, 2, 4, 8, 16, 64}) {
    // Slot e computes rows [e g, e g + g), with the counts on the host as a prefill has them.
    std::vector<kernels::ExpertGroup> groups;
    for (int64_t e = 0; e < E; ++e) {
      const bf16* base = ew.data() + e * 3 * H * I;
      groups.push_back({{base, base + H * I, base + 2 * H * I}, e * g, g});
    }
    std::vector<int32_t> row_index(static_cast<size_t>(E * g));
    std::iota(row_index.begin(), row_index.end(), 0);
    const kernels::HostExpertGroups experts(be, groups.data(), E, row_index.data());
    const double t = time_call([&] {
      be.expert_swiglu(ex.data(), H, I, experts.batch(), bf16_out ? nullptr : eo.data(), nullptr,
                       bf16_out ? eo_bf16.data() : nullptr);
    });
    h.grouped_table.emplace_back(g, 6.0 * H * I * E * g / t * 1e-9);
    samples["grouped"].push_back({{"experts", E}, {"rows_per_expert", g}, {"s", t}});
  }
  h.grouped_gemm_gflops = table_gflops(h.grouped_table, 16);
}

// Attention over one sequence of 128 new tokens.
void ComputeProbes::attention() {
  const int64_t T = 128;
  const int64_t kv = s.kv_width, q = s.q_width;
  kernels::Buffer<float> qb = upload(be, std::vector<float>(T * q, 0.01f));
  kernels::Buffer<float> kb = upload(be, std::vector<float>(T * kv, 0.01f));
  kernels::Buffer<float> vb = upload(be, std::vector<float>(T * kv, 0.01f));
  kernels::Buffer<float> ob(be, static_cast<size_t>(T * q));
  const int64_t kvb = kernels::kv_dtype_bytes(be.kv_cache_dtype());
  kernels::Buffer<unsigned char> kc(be, static_cast<size_t>(T * kv * kvb));
  kernels::Buffer<unsigned char> vc(be, static_cast<size_t>(T * kv * kvb));
  const kernels::AttentionShape shape{s.num_heads, s.num_kv_heads, s.head_dim};
  const std::vector<kernels::AttentionSeq> seq{{0, T, 0, 0}};
  kernels::Buffer<kernels::AttentionSeq> seq_dev = upload(be, seq);
  const kernels::AttentionBatch prefill{seq_dev.data(), seq.data(), 1, T};
  const kernels::KvCacheView cache{kc.data(), vc.data(), 1, T, be.kv_cache_dtype()};
  const double t = time_call(
      [&] { be.attention(qb.data(), kb.data(), vb.data(), prefill, shape, cache, ob.data()); });
  h.attention_gflops = attention_score_flops(c, T, 0) / t * 1e-9;
  samples["attention"] = {{"tokens", T}, {"s", t}};
  // Decode-like: S sequences of one new token after 63 cached ones; the time beyond the FLOPs
  // is a fixed cost per sequence.
  const int64_t S = 64, past = 63;
  kernels::Buffer<unsigned char> kc2(be, static_cast<size_t>(S * (past + 1) * kv * kvb));
  kernels::Buffer<unsigned char> vc2(be, static_cast<size_t>(S * (past + 1) * kv * kvb));
  std::vector<kernels::AttentionSeq> seqs;
  for (int64_t i = 0; i < S; ++i) seqs.push_back({i, 1, past, i});
  kernels::Buffer<kernels::AttentionSeq> seqs_dev = upload(be, seqs);
  const kernels::AttentionBatch decode{seqs_dev.data(), seqs.data(), S, S};
  const kernels::KvCacheView cache2{kc2.data(), vc2.data(), S, past + 1, be.kv_cache_dtype()};
  const double td = time_call(
      [&] { be.attention(qb.data(), kb.data(), vb.data(), decode, shape, cache2, ob.data()); });
  const double flop_s = S * attention_score_flops(c, 1, past) / (h.attention_gflops * 1e9);
  h.attention_seq_us = std::max(0.0, td - flop_s) / S * 1e6;
  samples["attention_decode"] = {{"sequences", S}, {"past", past}, {"s", td}};
}

// Row-wise ops of a layer at the model's widths, per token: input and post-attention RMSNorm
// over H, q/k RMSNorm per head, RoPE on q and k, the residual add.
void ComputeProbes::rowops() {
  const int64_t H = s.hidden;
  const int64_t T = 256;
  kernels::Buffer<float> xa = upload(be, std::vector<float>(T * H, 0.5f));
  kernels::Buffer<float> xb(be, static_cast<size_t>(T * H));
  kernels::Buffer<float> qa = upload(be, std::vector<float>(T * s.q_width, 0.5f));
  kernels::Buffer<float> ka = upload(be, std::vector<float>(T * s.kv_width, 0.5f));
  kernels::Buffer<bf16> nw = upload(be, random_bf16(static_cast<size_t>(H), 4));
  std::vector<int32_t> pos(static_cast<size_t>(T));
  std::iota(pos.begin(), pos.end(), 0);
  kernels::Buffer<int32_t> pos_dev = upload(be, pos);
  const float eps = static_cast<float>(c.rms_norm_eps);
  const double t = time_call([&] {
    be.rmsnorm(xa.data(), nw.data(), T, H, eps, xb.data());
    be.qk_norm_rope(qa.data(), ka.data(), nw.data(), nw.data(), pos_dev.data(), T, s.num_heads,
                    s.num_kv_heads, s.head_dim, eps, c.rope_theta);
    be.add_inplace(xa.data(), xb.data(), T * H);
    be.rmsnorm(xa.data(), nw.data(), T, H, eps, xb.data());
  });
  h.rowops_ns_per_token = t / static_cast<double>(T) * 1e9;
  samples["rowops"] = {{"tokens", T}, {"s", t}};
}

// Router top-k over the model's experts, per logit.
void ComputeProbes::router() {
  const int64_t E = s.num_experts;
  const int64_t T = 512;
  kernels::Buffer<float> logits = upload(be, std::vector<float>(T * E, 0.0f));
  {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> host(static_cast<size_t>(T * E));
    for (float& v : host) v = u(rng);
    be.upload(logits.data(), host.data(), host.size() * sizeof(float));
  }
  kernels::Buffer<int32_t> ids(be, static_cast<size_t>(T * s.top_k));
  kernels::Buffer<float> wts(be, ids.size());
  const double t = time_call([&] {
    be.router_topk(logits.data(), T, E, s.top_k, c.norm_topk_prob, ids.data(), wts.data());
  });
  h.topk_ns_per_logit = t / static_cast<double>(T * E) * 1e9;
  samples["router_topk"] = {{"tokens", T}, {"experts", E}, {"s", t}};
}

// Element-wise: add_inplace over 4M floats (read x, read y, write x) and over 16 floats (the
// fixed cost of an op).
void ComputeProbes::memory() {
  const int64_t n = 4 << 20;
  kernels::Buffer<float> a = upload(be, std::vector<float>(n, 1.0f));
  kernels::Buffer<float> b = upload(be, std::vector<float>(n, 1e-9f));
  const double t = time_call([&] { be.add_inplace(a.data(), b.data(), n); });
  h.memory_bandwidth_gbps = 12.0 * n / t * 1e-9;
  const double t_small = time_call([&] { be.add_inplace(a.data(), b.data(), 16); });
  h.launch_overhead_us = t_small * 1e6;
  samples["add_inplace"] = {{"elements", n}, {"s", t}, {"small_s", t_small}};
}

// Layout per (token, expert) pair: the one dispatcher's layout and grouping on one rank (no
// exchange), for a batch of prefill size with every expert on this rank.
void ComputeProbes::layout() {
  const int64_t H = s.hidden, E = s.num_experts;
  const int64_t T = 2048, k = s.top_k;
  const std::unique_ptr<parallel::Communicator> one = parallel::make_one_rank_communicator();
  const parallel::Placement placement =
      parallel::Placement::build({}, std::vector<bool>{true}, static_cast<int>(E), one->size());
  parallel::Dispatcher dispatcher(*one, be, H, static_cast<int>(k));
  dispatcher.set_placement(placement);
  std::mt19937 rng(3);
  std::vector<int32_t> ids(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> perm(static_cast<size_t>(E));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::copy(perm.begin(), perm.begin() + k, ids.begin() + t * k);
  }
  kernels::Buffer<int32_t> ids_dev = upload(be, ids);
  kernels::Buffer<float> wts_dev =
      upload(be, std::vector<float>(ids.size(), 1.0f / static_cast<float>(k)));
  kernels::Buffer<float> hidden(be, static_cast<size_t>(T * H));
  const double t = time_call([&] {
    dispatcher.begin_step();
    const parallel::DispatchHandle d =
        dispatcher.dispatch(0, hidden.data(), T, ids_dev.data(), wts_dev.data());
    be.synchronize();
    if (d.num_recv_rows != T) MOE_THROW("check", "layout probe: {} rows", d.num_recv_rows);
  });
  h.layout_ns_per_pair = t / static_cast<double>(T * k) * 1e9;
  samples["layout"] = {{"tokens", T}, {"top_k", k}, {"s", t}};
}

// Compute and memory probes (rank 0 alone).
void measure_compute(kernels::Backend& be, const ModelConfig& c, HardwareProfile& h,
                     nlohmann::json& samples) {
  ComputeProbes p{be, c, ModelShapes(c), h, samples};
  p.linear();
  p.grouped();
  p.attention();
  p.rowops();
  p.router();
  p.memory();
  p.layout();
}

// One link from a sweep of message sizes to the peers `to(p)` selects (the same set on every rank
// by symmetry: same node, or other nodes): bandwidth from the slope, latency per peer from the
// intercept above the bare collective's cost `t_counts`.
template <class Timed, class Peers>
LinkProfile measure_link(parallel::Communicator& comm, Timed& timed, double t_counts, Peers to,
                         const char* label, nlohmann::json& samples) {
  const int N = comm.size();
  int peers = 0;
  for (int p = 0; p < N; ++p) peers += to(p) ? 1 : 0;
  std::vector<double> xs, ys;
  const std::vector<std::pair<int64_t, int>> sizes = {
      {4 << 10, 200}, {64 << 10, 100}, {512 << 10, 30}, {2 << 20, 12}, {8 << 20, 4}};
  for (const auto& [bytes, reps] : sizes) {
    const int64_t n = bytes / static_cast<int64_t>(sizeof(float));
    std::vector<int64_t> sc(static_cast<size_t>(N), 0);
    for (int p = 0; p < N; ++p) sc[static_cast<size_t>(p)] = to(p) ? n : 0;
    std::vector<float> send(static_cast<size_t>(n * peers), 1.0f), recv(send.size());
    const double t = timed(reps, [&] { comm.all_to_all_v<float>(send, sc, recv, sc); });
    xs.push_back(static_cast<double>(bytes) * peers);
    ys.push_back(t);
    samples[label].push_back({{"bytes_per_peer", bytes}, {"ranks", N}, {"peers", peers}, {"s", t}});
  }
  const LineFit f = relative_least_squares(xs, ys);
  LinkProfile link;
  link.bandwidth_gbps = f.slope > 0 ? 1e-9 / f.slope : 1e3;
  link.latency_us = std::max(0.0, (f.intercept - t_counts) / std::max(1, peers)) * 1e6;
  return link;
}

// Seconds per call of fn on `comm`, the slowest rank's (collective: every rank calls it).
template <class F>
double timed_collective(parallel::Communicator& comm, int reps, F&& fn) {
  comm.barrier();
  fn();
  comm.barrier();
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) fn();
  std::vector<double> t{std::chrono::duration<double>(Clock::now() - t0).count() / reps};
  comm.all_reduce<double>(t, parallel::ReduceOp::kMax);
  return t[0];
}

// The bare collective's cost on `comm`: an all_to_all of one count per peer.
double counts_collective_seconds(parallel::Communicator& comm) {
  std::vector<int64_t> counts(static_cast<size_t>(comm.size()), 1), out(counts.size());
  return timed_collective(comm, 300, [&] { comm.all_to_all(counts, out); });
}

// Synchronisation after compute on `comm`: ~0.2 ms of busy host work per iteration (a layer
// phase of a small step), alone and followed by a counts exchange; with more ranks than cores
// the difference is the wait for descheduled ranks. Median of 5 trials (the scheduler is noisy).
double sync_wait_seconds(parallel::Communicator& comm, double t_counts, const char* label,
                         nlohmann::json& samples) {
  std::vector<int64_t> counts(static_cast<size_t>(comm.size()), 1), out(counts.size());
  std::vector<float> a(64 * 256, 0.5f), b(a.size(), 0.25f);
  volatile float sink = 0;
  auto busy = [&] {
    float acc = 0;
    for (int rep = 0; rep < 12; ++rep) {
      for (size_t i = 0; i < a.size(); ++i) acc += a[i] * b[(i * 7) % b.size()];
    }
    sink = sink + acc;
  };
  std::vector<double> waits;
  for (int trial = 0; trial < 5; ++trial) {
    const double alone = timed_collective(comm, 50, busy);
    const double synced = timed_collective(comm, 50, [&] {
      busy();
      comm.all_to_all(counts, out);
    });
    waits.push_back(std::max(0.0, synced - alone - t_counts));
    samples[label].push_back({{"busy_s", alone}, {"busy_then_collective_s", synced}});
  }
  std::sort(waits.begin(), waits.end());
  return waits[waits.size() / 2];
}

// Communicator probes at this job's rank count (collective).
MeasuredComm measure_comm(parallel::Communicator& comm, nlohmann::json& samples) {
  const int N = comm.size();
  MeasuredComm m;
  m.ranks = N;
  auto timed = [&](int reps, auto&& fn) { return timed_collective(comm, reps, fn); };
  const double t_counts = counts_collective_seconds(comm);
  m.collective_overhead_us = t_counts * 1e6;
  samples["all_to_all_counts_s"] = t_counts;

  // Links: one sweep to every peer on one node; across nodes, one sweep to this node's peers and
  // one to the other nodes' peers, so each link gets its own latency and bandwidth.
  const parallel::NodeLayout& nodes = comm.node_layout();
  const int me = comm.rank();
  if (nodes.num_nodes == 1) {
    m.link = measure_link(
        comm, timed, t_counts, [&](int p) { return p != me; }, "all_to_all_v", samples);
  } else {
    m.ranks_per_node = nodes.local_size;
    m.inter_link = measure_link(
        comm, timed, t_counts, [&](int p) { return nodes.node_of(p) != nodes.node; },
        "all_to_all_v_inter_node", samples);
    m.link = nodes.local_size > 1
                 ? measure_link(
                       comm, timed, t_counts,
                       [&](int p) { return p != me && nodes.node_of(p) == nodes.node; },
                       "all_to_all_v_intra_node", samples)
                 : m.inter_link;
  }
  m.sync_us = sync_wait_seconds(comm, t_counts, "sync", samples) * 1e6;
  if (nodes.num_nodes > 1) {
    // The node-first exchange's second level runs on each node's own communicator, every node
    // at once (as here): its fixed cost and wait after compute, the slowest node's.
    parallel::Communicator& node = comm.node_communicator();
    std::vector<double> v{counts_collective_seconds(node), 0};
    v[1] = sync_wait_seconds(node, v[0], "node_sync", samples);
    comm.all_reduce<double>(v, parallel::ReduceOp::kMax);
    m.node_collective_overhead_us = v[0] * 1e6;
    m.node_sync_us = v[1] * 1e6;
    samples["node_all_to_all_counts_s"] = v[0];
  }
  return m;
}

// Per-rank GEMM throughput with every rank computing at once, relative to rank 0 alone (the
// others asleep, not polling) times the core share the cost model assumes.
double measure_compute_scale(kernels::Backend& be, parallel::Communicator& comm,
                             const ModelConfig& c, const HardwareProfile& h, int threads,
                             nlohmann::json& samples) {
  const ModelShapes s(c);
  const int64_t H = s.hidden, out = std::max<int64_t>(s.q_width, H);
  const int64_t num_w = std::clamp<int64_t>((64ll << 20) / (out * H * kWeightBytes) + 1, 1, 256);
  kernels::Buffer<bf16> w = upload(be, random_bf16(static_cast<size_t>(num_w * out * H), 9));
  kernels::Buffer<float> x = upload(be, std::vector<float>(256 * std::max(H, out), 0.01f));
  kernels::Buffer<float> y(be, static_cast<size_t>(256 * std::max(H, out)));
  int64_t next = 0;
  const int saved = kernels::host_threads();
  kernels::set_host_threads(threads);
  // The mix of a forward: small-row GEMMs (decode, experts) and large ones (prefill).
  auto mix = [&] {
    for (int i = 0; i < 4; ++i) {
      be.linear(x.data(), w.data() + (next++ % num_w) * out * H, 8, H, out, y.data());
    }
    be.linear(x.data(), w.data() + (next++ % num_w) * out * H, 256, H, out, y.data());
  };
  const int reps = 12;
  auto run_mix = [&] {
    mix();
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) mix();
    return std::chrono::duration<double>(Clock::now() - t0).count() / reps;
  };
  std::vector<double> alone{0.0};
  comm.barrier();
  if (comm.rank() == 0) {
    alone[0] = run_mix();
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  }
  comm.barrier();
  comm.broadcast<double>(alone, 0);
  std::vector<double> trials;
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<double> t{run_mix()};
    comm.all_reduce<double>(t, parallel::ReduceOp::kMax);
    trials.push_back(t[0]);
  }
  std::sort(trials.begin(), trials.end());
  const std::vector<double> together{trials[1]};
  kernels::set_host_threads(saved);
  // The share this job's layout gives a rank (its node's ranks on its node's cores), so that
  // share x scale = alone / together whatever the layout.
  HardwareProfile plain = h;
  plain.measured.clear();
  plain.ranks_per_node = comm.node_layout().local_size;
  const double share = rank_compute_share(plain, comm.size(), threads);
  samples["compute_scale"] = {{"alone_s", alone[0]}, {"together_s", together[0]}, {"share", share}};
  return std::clamp(alone[0] / together[0] / share, 0.05, 2.0);
}

// The CPUs of this node the job may use: the union of its ranks' affinity masks (collective).
// A launcher that binds each rank to a core leaves each rank one CPU, yet the node has them all;
// a node confined by taskset or a cpuset has only those.
int node_cores(parallel::Communicator& comm) {
  std::vector<int32_t> mask = kernels::usable_cpu_mask();
  comm.node_communicator().all_reduce<int32_t>(mask, parallel::ReduceOp::kMax);
  return std::max<int>(1, static_cast<int>(std::count(mask.begin(), mask.end(), 1)));
}

}  // namespace

LineFit relative_least_squares(const std::vector<double>& x, const std::vector<double>& y) {
  double sw = 0, swx = 0, swy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double w = y[i] > 0 ? 1.0 / (y[i] * y[i]) : 0.0;
    sw += w;
    swx += w * x[i];
    swy += w * y[i];
  }
  LineFit f;
  if (sw <= 0) return f;
  const double mx = swx / sw, my = swy / sw;
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double w = y[i] > 0 ? 1.0 / (y[i] * y[i]) : 0.0;
    sxy += w * (x[i] - mx) * (y[i] - my);
    sxx += w * (x[i] - mx) * (x[i] - mx);
  }
  f.slope = sxx > 0 ? sxy / sxx : 0;
  f.intercept = my - f.slope * mx;
  return f;
}

CalibrateResult calibrate(kernels::Backend& backend, parallel::Communicator& comm,
                          const ModelConfig& shapes, const HardwareProfile& base,
                          const CalibrateOptions& o) {
  CalibrateResult r;
  r.profile = base;
  HardwareProfile& h = r.profile;
  h.name = o.name;
  h.kind = backend.is_host_memory() ? "cpu" : "gpu";
  h.cores = h.is_cpu() ? (o.cores > 0 ? o.cores : node_cores(comm)) : 0;
  // One node: every rank of a calibrated CPU job shares its cores.
  if (h.is_cpu()) h.ranks_per_node = std::max(h.ranks_per_node, 64);
  if (o.measure_compute) {
    const int saved = kernels::host_threads();
    if (comm.rank() == 0) {
      kernels::set_host_threads(o.threads);
      measure_compute(backend, shapes, h, r.samples);
      kernels::set_host_threads(saved);
    }
    // Everyone gets rank 0's numbers.
    std::vector<double> v{h.prefill_gemm_gflops, h.decode_gemm_gflops,    h.grouped_gemm_gflops,
                          h.attention_gflops,    h.memory_bandwidth_gbps, h.weight_read_gbps,
                          h.launch_overhead_us,  h.layout_ns_per_pair,    h.topk_ns_per_logit,
                          h.rowops_ns_per_token, h.attention_seq_us};
    comm.broadcast<double>(v, 0);
    h.prefill_gemm_gflops = v[0];
    h.decode_gemm_gflops = v[1];
    h.grouped_gemm_gflops = v[2];
    h.attention_gflops = v[3];
    h.memory_bandwidth_gbps = v[4];
    h.weight_read_gbps = v[5];
    h.launch_overhead_us = v[6];
    h.layout_ns_per_pair = v[7];
    h.topk_ns_per_logit = v[8];
    h.rowops_ns_per_token = v[9];
    h.attention_seq_us = v[10];
    h.gemm_overlap = GemmOverlap::kSum;
    for (auto* table : {&h.gemm_table, &h.grouped_table}) {
      std::vector<double> flat;
      for (const auto& [rows, g] : *table) flat.insert(flat.end(), {static_cast<double>(rows), g});
      std::vector<int64_t> n{static_cast<int64_t>(flat.size())};
      comm.broadcast<int64_t>(n, 0);
      flat.resize(static_cast<size_t>(n[0]));
      comm.broadcast<double>(flat, 0);
      table->clear();
      for (size_t i = 0; i + 1 < flat.size(); i += 2) {
        table->emplace_back(static_cast<int64_t>(flat[i]), flat[i + 1]);
      }
    }
  }
  if (comm.size() > 1) {
    MeasuredComm m = measure_comm(comm, r.samples);
    m.compute_scale = measure_compute_scale(backend, comm, shapes, h, o.threads, r.samples);
    std::erase_if(h.measured, [&](const MeasuredComm& e) { return e.ranks == m.ranks; });
    h.measured.push_back(m);
    std::sort(h.measured.begin(), h.measured.end(),
              [](const MeasuredComm& a, const MeasuredComm& b) { return a.ranks < b.ranks; });
  }
  // Unmeasured rank counts fall back to the links: the smallest measured count stands for them.
  // An entry measured across nodes gives the inter-node link.
  if (!h.measured.empty()) {
    h.intra_node = h.measured.front().link;
    h.inter_node = h.measured.front().link;
    h.collective_overhead_us = h.measured.front().collective_overhead_us;
    for (const MeasuredComm& m : h.measured) {
      if (m.ranks_per_node > 0) h.inter_node = m.inter_link;
    }
  }
  if (!(h.intra_node.bandwidth_gbps > 0)) h.intra_node.bandwidth_gbps = h.memory_bandwidth_gbps;
  if (!(h.inter_node.bandwidth_gbps > 0)) h.inter_node = h.intra_node;
  h.validate();
  return r;
}

}  // namespace moe::runtime
