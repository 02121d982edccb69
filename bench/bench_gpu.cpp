// GPU benchmark for one device (the lent H200): HBM copy bandwidth; grouped expert GEMM
// (cublasGemmGroupedBatchedEx, one call for all experts) next to a dense cuBLAS bf16 GEMM of
// equal FLOPs; one Qwen3-30B-A3B-sized MoE layer and optionally the whole 48-layer model with
// synthetic weights: prefill tokens/s and decode step latency at batch 1/8/64 with the HBM floor
// (bytes a step must read / measured copy bandwidth) beside them; memory used vs the analytic
// size. Needs only the CUDA backend (no MPI, no BLAS). Never a pass/fail test; prints fixed
// tables and writes the numbers as JSON (--json FILE).
//
//   gpu_bench [--layers N] [--prefill-len L] [--context C] [--json FILE] [--quick] [--model-only]
// --layers 48 (or more) runs the whole model: embedding, 48 layers, final norm, lm_head.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_raii.h"
#include "kernels/cuda/grouped_gemm_plan.h"

namespace moe::bench {
namespace {

using kernels::AttentionSeq;
using kernels::AttentionShape;
using kernels::Backend;
using kernels::Buffer;
using kernels::CudaBackend;
using kernels::ExpertGroup;
using kernels::ExpertWeights;
using kernels::KvCacheView;

// Qwen3-30B-A3B (QWEN3_MOE.md).
struct Dims {
  int64_t hidden = 2048;
  int64_t heads = 32;
  int64_t kv_heads = 4;
  int64_t head_dim = 128;
  int64_t inter = 768;
  int64_t experts = 128;
  int64_t top_k = 8;
  int64_t vocab = 151936;
  int64_t layers = 48;
  float eps = 1e-6f;
  double theta = 1e6;
  int64_t q_width() const { return heads * head_dim; }
  int64_t kv_width() const { return kv_heads * head_dim; }
  // Bytes of one layer's weights outside the experts (attention, norms, router).
  int64_t dense_layer_bytes() const {
    return 2 * (hidden * (q_width() + 2 * kv_width()) + q_width() * hidden + 2 * hidden +
                2 * head_dim + experts * hidden);
  }
  int64_t expert_bytes() const { return 2 * 3 * hidden * inter; }
};

struct Options {
  int64_t layers = 1;
  int64_t prefill_len = 512;
  int64_t context = 1024;
  std::vector<int64_t> batches = {1, 8, 64};
  std::string json;
  bool quick = false;
  bool model_only = false;  // skip the grouped-vs-dense GEMM table
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Mean seconds per call of fn(), timed with events on the backend stream after one warm-up.
template <class Fn>
double time_on_stream(CudaBackend& b, int iters, Fn&& fn) {
  fn();
  b.synchronize();
  auto start = kernels::cuda::Event::create(true), stop = kernels::cuda::Event::create(true);
  MOE_CUDA_CHECK(cudaEventRecord(start.get(), b.stream()));
  for (int i = 0; i < iters; ++i) fn();
  MOE_CUDA_CHECK(cudaEventRecord(stop.get(), b.stream()));
  MOE_CUDA_CHECK(cudaEventSynchronize(stop.get()));
  float ms = 0.0f;
  MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
  return ms * 1e-3 / iters;
}

// Wall-clock seconds per call (for work with host syncs inside, like a layer's router).
template <class Fn>
double time_wall(Backend& b, int iters, Fn&& fn) {
  fn();
  b.synchronize();
  const double t0 = now_s();
  for (int i = 0; i < iters; ++i) fn();
  b.synchronize();
  return (now_s() - t0) / iters;
}

// Random top-k routing of `tokens` tokens (k distinct experts each, uniform): pairs per expert.
std::vector<int64_t> random_expert_counts(std::mt19937& rng, int64_t tokens, const Dims& d) {
  std::vector<int64_t> counts(d.experts, 0);
  std::vector<int32_t> ids(d.experts);
  std::iota(ids.begin(), ids.end(), 0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < d.top_k; ++j) {  // partial Fisher-Yates: k distinct experts
      const int64_t pick = std::uniform_int_distribution<int64_t>(j, d.experts - 1)(rng);
      std::swap(ids[j], ids[pick]);
      ++counts[ids[j]];
    }
  }
  return counts;
}

struct JsonOut {
  std::string body;
  void add(const std::string& section, const std::string& row) {
    body +=
        fmt::format("{}    {{\"section\": \"{}\", {}}}", body.empty() ? "" : ",\n", section, row);
  }
  void write(const std::string& path, const std::string& device) const {
    if (path.empty()) return;
    std::FILE* f = std::fopen(path.c_str(), "w");
    MOE_CHECK(f != nullptr, "cannot write {}", path);
    std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"rows\": [\n%s\n  ]\n}\n", device.c_str(),
                 body.c_str());
    std::fclose(f);
  }
};

// ---------------------------------------------------------------- HBM copy bandwidth
double copy_bandwidth(CudaBackend& b, JsonOut& json) {
  const size_t bytes = size_t{2} << 30;
  Buffer<unsigned char> src(b, bytes), dst(b, bytes);
  b.fill_zero(src.data(), bytes);
  const double s = time_on_stream(b, 10, [&] { b.copy(dst.data(), src.data(), bytes); });
  const double bw = 2.0 * static_cast<double>(bytes) / s;  // read + write
  fmt::print("\nHBM: device-to-device copy of {} GiB: {:.3f} ms -> {:.2f} TB/s (read + write)\n",
             bytes >> 30, s * 1e3, bw * 1e-12);
  json.add("hbm", fmt::format("\"copy_bytes\": {}, \"seconds\": {:.6e}, \"tb_per_s\": {:.4f}",
                              bytes, s, bw * 1e-12));
  return bw;
}

// ---------------------------------------------------------------- grouped vs dense GEMM
void grouped_vs_dense(CudaBackend& b, const Dims& d, const Options& opt, double copy_bw,
                      JsonOut& json) {
  const int64_t H = d.hidden, I = d.inter, E = d.experts;
  // All experts' weights in one allocation (1.2 GB), like a rank holding every expert.
  Buffer<bf16> w(b, static_cast<size_t>(E * 3 * H * I));
  b.fill_random_bf16(w.data(), static_cast<int64_t>(w.size()), 1, 0.02f);
  std::vector<ExpertWeights> ew(E);
  for (int64_t e = 0; e < E; ++e) {
    const bf16* base = w.data() + e * 3 * H * I;
    ew[e] = {base, base + H * I, base + 2 * H * I};
  }
  auto cublas = kernels::cuda::CublasHandle::create(b.stream());

  fmt::print(
      "\nGrouped expert GEMM (E={} experts, top-{}, H={}, I={}; one cuBLAS call per "
      "projection for all experts) vs dense bf16 GEMM of equal FLOPs; 'HBM-bound' = the rate "
      "if reading the active experts' weights once at the measured copy bandwidth were all\n",
      E, d.top_k, H, I);
  fmt::print("{:>7} {:>8} {:>10} {:>12} {:>12} {:>8} {:>12} {:>13} {:>13}\n", "tokens", "pairs",
             "experts>0", "grouped TF/s", "dense TF/s", "ratio", "HBM-bound", "swiglu ms",
             "swiglu TF/s");
  std::mt19937 rng(5);
  const std::vector<int64_t> token_counts = opt.quick
                                                ? std::vector<int64_t>{128, 4096}
                                                : std::vector<int64_t>{16, 128, 1024, 4096, 16384};
  for (int64_t tokens : token_counts) {
    const std::vector<int64_t> counts = random_expert_counts(rng, tokens, d);
    const int64_t P = tokens * d.top_k;
    std::vector<ExpertGroup> groups;
    int64_t at = 0, active = 0;
    for (int64_t e = 0; e < E; ++e) {
      groups.push_back({ew[e], at, counts[e]});
      at += counts[e];
      active += counts[e] > 0 ? 1 : 0;
    }
    std::vector<int32_t> row_index(P);
    for (auto& r : row_index) r = std::uniform_int_distribution<int32_t>(0, tokens - 1)(rng);

    // Gate projection alone through the same plan/argument code as the backend.
    const auto plan = kernels::cuda::plan_grouped_swiglu(groups.data(), E, row_index.data(), H, I);
    Buffer<bf16> xc(b, static_cast<size_t>(plan.x_elems())), gate(b, plan.inter_elems());
    b.fill_random_bf16(xc.data(), plan.x_elems(), 2, 1.0f);
    const auto args =
        kernels::cuda::grouped_gemm_args(plan, kernels::cuda::Projection::kGate,
                                         {xc.data(), gate.data(), nullptr, nullptr, nullptr});
    const int G = args.group_count();
    std::vector<const void*> ptrs;
    ptrs.insert(ptrs.end(), args.a.begin(), args.a.end());
    ptrs.insert(ptrs.end(), args.b.begin(), args.b.end());
    ptrs.insert(ptrs.end(), args.c.begin(), args.c.end());
    Buffer<const void*> d_ptrs(b, ptrs.size());
    b.upload(d_ptrs.data(), ptrs.data(), ptrs.size() * sizeof(void*));
    std::vector<cublasOperation_t> ta(G, CUBLAS_OP_T), tb(G, CUBLAS_OP_N);
    const double flops = 2.0 * static_cast<double>(P) * H * I;
    const int iters = tokens <= 1024 ? 50 : 10;
    const double t_grouped = time_on_stream(b, iters, [&] {
      MOE_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
          cublas.get(), ta.data(), tb.data(), args.m.data(), args.n.data(), args.k.data(),
          args.alpha.data(), d_ptrs.data(), CUDA_R_16BF, args.lda.data(), d_ptrs.data() + G,
          CUDA_R_16BF, args.ldb.data(), args.beta.data(),
          reinterpret_cast<void* const*>(const_cast<void**>(d_ptrs.data() + 2 * G)), CUDA_R_16BF,
          args.ldc.data(), G, args.group_size.data(), CUBLAS_COMPUTE_32F));
    });
    // Dense: one [I, H] x [H, P] GEMM, bf16 in and out, fp32 accumulate.
    const float alpha = 1.0f, beta = 0.0f;
    const double t_dense = time_on_stream(b, iters, [&] {
      MOE_CUBLAS_CHECK(cublasGemmEx(cublas.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(I),
                                    static_cast<int>(P), static_cast<int>(H), &alpha, ew[0].gate,
                                    CUDA_R_16BF, static_cast<int>(H), xc.data(), CUDA_R_16BF,
                                    static_cast<int>(H), &beta, gate.data(), CUDA_R_16BF,
                                    static_cast<int>(I), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
    // The whole backend op: gather + 3 grouped GEMMs + SiLU*mul + scatter, fp32 in and out.
    Buffer<float> x(b, static_cast<size_t>(tokens * H)), out(b, static_cast<size_t>(P * H));
    b.fill_random_f32(x.data(), tokens * H, 3, 1.0f);
    const double t_swiglu = time_on_stream(b, iters, [&] {
      b.grouped_expert_swiglu(x.data(), H, I, groups.data(), E, row_index.data(), out.data());
    });
    const double weight_s = static_cast<double>(active) * H * I * 2 / copy_bw;
    fmt::print("{:>7} {:>8} {:>10} {:>12.1f} {:>12.1f} {:>8.2f} {:>12.1f} {:>13.3f} {:>13.1f}\n",
               tokens, P, active, flops / t_grouped * 1e-12, flops / t_dense * 1e-12,
               t_dense / t_grouped, flops / weight_s * 1e-12, t_swiglu * 1e3,
               3 * flops / t_swiglu * 1e-12);
    json.add("grouped_gemm",
             fmt::format("\"tokens\": {}, \"pairs\": {}, \"active_experts\": {}, "
                         "\"grouped_s\": {:.6e}, \"dense_s\": {:.6e}, \"swiglu_s\": {:.6e}, "
                         "\"grouped_tflops\": {:.3f}, \"dense_tflops\": {:.3f}, "
                         "\"swiglu_tflops\": {:.3f}, \"hbm_bound_tflops\": {:.3f}",
                         tokens, P, active, t_grouped, t_dense, t_swiglu, flops / t_grouped * 1e-12,
                         flops / t_dense * 1e-12, 3 * flops / t_swiglu * 1e-12,
                         flops / weight_s * 1e-12));
  }
}

// ---------------------------------------------------------------- Qwen3-MoE layer / model
struct LayerWeights {
  Buffer<bf16> input_norm, post_norm, q_norm, k_norm;  // [H] [H] [hd] [hd]
  Buffer<bf16> q, k, v, o;                             // [q_w, H] [kv_w, H] x2 [H, q_w]
  Buffer<bf16> router;                                 // [E, H]
  Buffer<bf16> experts;                                // [E, 3, I, H]: gate, up, down
};

Buffer<bf16> ones(Backend& b, int64_t n) {
  std::vector<bf16> host(static_cast<size_t>(n), float_to_bf16(1.0f));
  Buffer<bf16> buf(b, host.size());
  b.upload(buf.data(), host.data(), host.size() * sizeof(bf16));
  return buf;
}

LayerWeights make_layer(CudaBackend& b, const Dims& d, uint64_t seed) {
  LayerWeights w;
  const int64_t H = d.hidden;
  auto rnd = [&](int64_t n, float scale) {
    Buffer<bf16> buf(b, static_cast<size_t>(n));
    b.fill_random_bf16(buf.data(), n, seed++, scale);
    return buf;
  };
  w.input_norm = ones(b, H);
  w.post_norm = ones(b, H);
  w.q_norm = ones(b, d.head_dim);
  w.k_norm = ones(b, d.head_dim);
  w.q = rnd(d.q_width() * H, 0.03f);
  w.k = rnd(d.kv_width() * H, 0.03f);
  w.v = rnd(d.kv_width() * H, 0.03f);
  w.o = rnd(H * d.q_width(), 0.02f);
  w.router = rnd(d.experts * H, 0.05f);
  w.experts = rnd(d.experts * 3 * H * d.inter, 0.03f);
  return w;
}

struct Activations {
  Buffer<float> x, h, q, k, v, attn, tmp, logits, expert_out;
  void ensure(Backend& b, const Dims& d, int64_t T) {
    x.ensure(b, T * d.hidden);
    h.ensure(b, T * d.hidden);
    q.ensure(b, T * d.q_width());
    k.ensure(b, T * d.kv_width());
    v.ensure(b, T * d.kv_width());
    attn.ensure(b, T * d.q_width());
    tmp.ensure(b, T * d.hidden);
    logits.ensure(b, T * d.experts);
    expert_out.ensure(b, T * d.top_k * d.hidden);
  }
};

struct KvCache {
  Buffer<bf16> k, v;  // [slots, max_len, kv_w], the CUDA backend's bf16 cache
  int64_t slots = 0, max_len = 0;
  KvCacheView view() { return {k.data(), v.data(), slots, max_len, kernels::KvDtype::kBF16}; }
};

// Host-side routing bookkeeping of one layer (single rank: every expert is local).
struct Routing {
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::vector<int32_t> row_index, src_index;
  std::vector<int64_t> offsets, cursor;
  std::vector<float> pair_weights;
  std::vector<ExpertGroup> groups;
  int64_t active_experts = 0;
};

struct StepInput {
  std::vector<AttentionSeq> seqs;
  std::vector<int32_t> positions;
  int64_t tokens = 0;
};

// Optional per-phase timing of run_layer: events recorded on the stream at phase boundaries.
struct PhaseTimer {
  static constexpr const char* kNames[] = {"norm+qkv+qk_norm+rope",  "attention (fused)",
                                           "o_proj+add+norm+router", "router top-k (+host sync)",
                                           "grouped experts",        "combine+add"};
  static constexpr int kPhases = 6;
  std::vector<kernels::cuda::Event> events;
  std::vector<double> total_ms = std::vector<double>(kPhases, 0.0);
  PhaseTimer() {
    for (int i = 0; i <= kPhases; ++i) events.push_back(kernels::cuda::Event::create(true));
  }
  void mark(CudaBackend& b, int i) { MOE_CUDA_CHECK(cudaEventRecord(events[i].get(), b.stream())); }
  void collect() {
    MOE_CUDA_CHECK(cudaEventSynchronize(events[kPhases].get()));
    for (int i = 0; i < kPhases; ++i) {
      float ms = 0.0f;
      MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, events[i].get(), events[i + 1].get()));
      total_ms[i] += ms;
    }
  }
};

void run_layer(CudaBackend& b, const Dims& d, const LayerWeights& w, Activations& a, KvCache& cache,
               const StepInput& in, Routing& r, PhaseTimer* timer = nullptr) {
  const int64_t T = in.tokens, H = d.hidden, E = d.experts, K = d.top_k;
  auto mark = [&](int i) {
    if (timer != nullptr) timer->mark(b, i);
  };
  mark(0);
  b.rmsnorm(a.x.data(), w.input_norm.data(), T, H, d.eps, a.h.data());
  b.linear(a.h.data(), w.q.data(), T, H, d.q_width(), a.q.data());
  b.linear(a.h.data(), w.k.data(), T, H, d.kv_width(), a.k.data());
  b.linear(a.h.data(), w.v.data(), T, H, d.kv_width(), a.v.data());
  b.rmsnorm(a.q.data(), w.q_norm.data(), T * d.heads, d.head_dim, d.eps, a.q.data());
  b.rmsnorm(a.k.data(), w.k_norm.data(), T * d.kv_heads, d.head_dim, d.eps, a.k.data());
  b.rope(a.q.data(), in.positions.data(), T, d.heads, d.head_dim, d.theta);
  b.rope(a.k.data(), in.positions.data(), T, d.kv_heads, d.head_dim, d.theta);
  mark(1);
  b.attention(a.q.data(), a.k.data(), a.v.data(), in.seqs.data(),
              static_cast<int64_t>(in.seqs.size()), {d.heads, d.kv_heads, d.head_dim}, cache.view(),
              a.attn.data());
  mark(2);
  b.linear(a.attn.data(), w.o.data(), T, d.q_width(), H, a.tmp.data());
  b.add_inplace(a.x.data(), a.tmp.data(), T * H);
  b.rmsnorm(a.x.data(), w.post_norm.data(), T, H, d.eps, a.h.data());
  b.linear(a.h.data(), w.router.data(), T, H, E, a.logits.data());
  r.ids.resize(T * K);
  r.weights.resize(T * K);
  mark(3);
  b.router_topk(a.logits.data(), T, E, K, true, r.ids.data(), r.weights.data());

  // Counting sort of the (token, expert) pairs by expert: row_index in expert order, and for
  // the combine each token's k pairs in its top-k order.
  r.offsets.assign(E + 1, 0);
  for (int32_t e : r.ids) ++r.offsets[e + 1];
  for (int64_t e = 0; e < E; ++e) r.offsets[e + 1] += r.offsets[e];
  r.cursor.assign(r.offsets.begin(), r.offsets.end() - 1);
  r.row_index.resize(T * K);
  r.src_index.resize(T * K);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      const int64_t p = r.cursor[r.ids[t * K + j]]++;
      r.row_index[p] = static_cast<int32_t>(t);
      r.src_index[t * K + j] = static_cast<int32_t>(p);
    }
  }
  r.groups.clear();
  r.active_experts = 0;
  const int64_t expert_elems = 3 * H * d.inter;
  for (int64_t e = 0; e < E; ++e) {
    const bf16* base = w.experts.data() + e * expert_elems;
    const int64_t count = r.offsets[e + 1] - r.offsets[e];
    r.groups.push_back({{base, base + H * d.inter, base + 2 * H * d.inter}, r.offsets[e], count});
    r.active_experts += count > 0 ? 1 : 0;
  }
  mark(4);
  b.grouped_expert_swiglu(a.h.data(), H, d.inter, r.groups.data(), E, r.row_index.data(),
                          a.expert_out.data());
  mark(5);
  std::vector<int64_t> token_offsets(T + 1);
  for (int64_t t = 0; t <= T; ++t) token_offsets[t] = t * K;
  b.weighted_row_sum(a.expert_out.data(), H, r.src_index.data(), r.weights.data(),
                     token_offsets.data(), T, a.tmp.data());
  b.add_inplace(a.x.data(), a.tmp.data(), T * H);
  mark(6);
  if (timer != nullptr) timer->collect();
}

StepInput prefill_input(int64_t batch, int64_t len) {
  StepInput in;
  for (int64_t s = 0; s < batch; ++s) {
    in.seqs.push_back({s * len, len, 0, s});
    for (int64_t i = 0; i < len; ++i) in.positions.push_back(static_cast<int32_t>(i));
  }
  in.tokens = batch * len;
  return in;
}

StepInput decode_input(int64_t batch, int64_t context) {
  StepInput in;
  for (int64_t s = 0; s < batch; ++s) {
    in.seqs.push_back({s, 1, context, s});
    in.positions.push_back(static_cast<int32_t>(context));
  }
  in.tokens = batch;
  return in;
}

struct Model {
  Dims d;
  std::vector<LayerWeights> layers;
  std::vector<KvCache> caches;
  Buffer<bf16> embed, final_norm, lm_head;
  Activations act;
  Buffer<float> last_rows, logits;
  Routing routing;
  std::vector<int64_t> active_per_layer;
};

// One forward step over all layers (embedding and lm_head on the last token of each sequence
// when the model is whole); returns the number of distinct experts used per layer.
void run_model_step(CudaBackend& b, Model& m, const StepInput& in, bool whole_model) {
  const Dims& d = m.d;
  const int64_t T = in.tokens;
  m.act.ensure(b, d, T);
  if (whole_model) {
    std::vector<int32_t> ids(T);
    for (int64_t t = 0; t < T; ++t) ids[t] = static_cast<int32_t>((t * 7919) % d.vocab);
    b.embedding(m.embed.data(), d.vocab, d.hidden, ids.data(), T, m.act.x.data());
  } else {
    b.fill_random_f32(m.act.x.data(), T * d.hidden, 99, 1.0f);
  }
  m.active_per_layer.clear();
  for (size_t l = 0; l < m.layers.size(); ++l) {
    run_layer(b, d, m.layers[l], m.act, m.caches[l], in, m.routing);
    m.active_per_layer.push_back(m.routing.active_experts);
  }
  if (whole_model) {
    const int64_t n = static_cast<int64_t>(in.seqs.size());
    std::vector<int32_t> last(n);
    for (int64_t s = 0; s < n; ++s) {
      last[s] = static_cast<int32_t>(in.seqs[s].row_begin + in.seqs[s].num_new - 1);
    }
    m.last_rows.ensure(b, n * d.hidden);
    m.logits.ensure(b, n * d.vocab);
    b.gather_rows(m.act.x.data(), d.hidden, last.data(), n, m.last_rows.data());
    b.rmsnorm(m.last_rows.data(), m.final_norm.data(), n, d.hidden, d.eps, m.last_rows.data());
    b.linear(m.last_rows.data(), m.lm_head.data(), n, d.hidden, d.vocab, m.logits.data());
  }
}

void model_bench(CudaBackend& b, const Options& opt, double copy_bw, JsonOut& json) {
  Model m;
  const Dims& d = m.d;
  const bool whole = opt.layers >= d.layers;
  const int64_t L = std::min(opt.layers, d.layers);
  const int64_t max_batch = *std::max_element(opt.batches.begin(), opt.batches.end());
  const int64_t max_len = std::max(opt.prefill_len, opt.context + 1);
  const int64_t used0 = b.device_used_bytes();
  const size_t alloc0 = b.allocated_bytes();

  const double t_init = now_s();
  for (int64_t l = 0; l < L; ++l) {
    m.layers.push_back(make_layer(b, d, 1000 * (l + 1)));
    KvCache c;
    c.slots = max_batch;
    c.max_len = max_len;
    c.k = Buffer<bf16>(b, static_cast<size_t>(c.slots * c.max_len * d.kv_width()));
    c.v = Buffer<bf16>(b, c.k.size());
    // Past keys/values for the decode runs: random, so attention reads real numbers.
    b.fill_random_bf16(c.k.data(), static_cast<int64_t>(c.k.size()), 7 * l + 1, 1.0f);
    b.fill_random_bf16(c.v.data(), static_cast<int64_t>(c.v.size()), 7 * l + 2, 1.0f);
    m.caches.push_back(std::move(c));
  }
  if (whole) {
    m.embed = Buffer<bf16>(b, static_cast<size_t>(d.vocab * d.hidden));
    b.fill_random_bf16(m.embed.data(), d.vocab * d.hidden, 5, 1.0f);
    m.lm_head = Buffer<bf16>(b, static_cast<size_t>(d.vocab * d.hidden));
    b.fill_random_bf16(m.lm_head.data(), d.vocab * d.hidden, 6, 0.02f);
    m.final_norm = ones(b, d.hidden);
  }
  b.synchronize();
  const int64_t weight_bytes = L * (d.dense_layer_bytes() + d.experts * d.expert_bytes()) +
                               (whole ? 2 * d.vocab * d.hidden * 2 + 2 * d.hidden : 0);
  const int64_t kv_bytes = L * 2 * max_batch * max_len * d.kv_width() * 2;
  fmt::print(
      "\n{} ({} layer{}{}): weights {:.2f} GB, KV cache {:.2f} GB ({} slots x {} "
      "positions, bf16), built in {:.2f} s\n",
      whole ? "Qwen3-30B-A3B, synthetic weights" : "Qwen3-30B-A3B-sized MoE layer", L,
      L == 1 ? "" : "s", whole ? " + embedding + lm_head" : "", weight_bytes * 1e-9,
      kv_bytes * 1e-9, max_batch, max_len, now_s() - t_init);

  fmt::print("{:>8} {:>6} {:>8} {:>12} {:>14} {:>10} {:>14} {:>10}\n", "phase", "batch", "tokens",
             "time ms", "tokens/s", "experts/L", "HBM floor ms", "of floor");
  const int iters = opt.quick ? 1 : 3;
  for (int64_t batch : opt.batches) {
    const StepInput pre = prefill_input(batch, opt.prefill_len);
    const double t = time_wall(b, iters, [&] { run_model_step(b, m, pre, whole); });
    const double experts =
        std::accumulate(m.active_per_layer.begin(), m.active_per_layer.end(), 0.0) / L;
    fmt::print("{:>8} {:>6} {:>8} {:>12.2f} {:>14.0f} {:>10.1f} {:>14} {:>10}\n", "prefill", batch,
               pre.tokens, t * 1e3, pre.tokens / t, experts, "-", "-");
    json.add("model", fmt::format("\"phase\": \"prefill\", \"layers\": {}, \"batch\": {}, "
                                  "\"tokens\": {}, \"seconds\": {:.6e}, \"tokens_per_s\": {:.1f}",
                                  L, batch, pre.tokens, t, pre.tokens / t));
  }
  for (int64_t batch : opt.batches) {
    const StepInput dec = decode_input(batch, opt.context);
    const double t = time_wall(b, opt.quick ? 2 : 10, [&] { run_model_step(b, m, dec, whole); });
    // The step must at least read: each layer's dense weights, the experts it routed to, the KV
    // cache of every sequence (k and v, bf16), plus embedding rows and lm_head when whole.
    double bytes = 0.0;
    for (int64_t active : m.active_per_layer) {
      bytes += static_cast<double>(d.dense_layer_bytes()) +
               static_cast<double>(active) * d.expert_bytes() +
               static_cast<double>(batch) * (opt.context + 1) * d.kv_width() * 2 * 2;
    }
    if (whole) bytes += static_cast<double>(d.vocab) * d.hidden * 2 + batch * d.hidden * 2.0;
    const double floor_s = bytes / copy_bw;
    const double experts =
        std::accumulate(m.active_per_layer.begin(), m.active_per_layer.end(), 0.0) / L;
    fmt::print("{:>8} {:>6} {:>8} {:>12.3f} {:>14.0f} {:>10.1f} {:>14.3f} {:>9.0f}%\n", "decode",
               batch, dec.tokens, t * 1e3, dec.tokens / t, experts, floor_s * 1e3,
               100.0 * floor_s / t);
    json.add("model",
             fmt::format("\"phase\": \"decode\", \"layers\": {}, \"batch\": {}, \"context\": {}, "
                         "\"seconds\": {:.6e}, \"tokens_per_s\": {:.1f}, \"hbm_floor_s\": {:.6e}, "
                         "\"bytes_read_min\": {:.0f}, \"active_experts_per_layer\": {:.2f}",
                         L, batch, opt.context, t, dec.tokens / t, floor_s, bytes, experts));
  }
  // Where one layer's time goes (layer 0, events at phase boundaries, mean of 3 runs).
  {
    const std::vector<std::pair<std::string, StepInput>> cases = {
        {fmt::format("prefill {}x{}", max_batch, opt.prefill_len),
         prefill_input(max_batch, opt.prefill_len)},
        {"decode 1", decode_input(1, opt.context)},
        {fmt::format("decode {}", max_batch), decode_input(max_batch, opt.context)}};
    std::vector<PhaseTimer> timers(cases.size());
    for (size_t c = 0; c < cases.size(); ++c) {
      m.act.ensure(b, d, cases[c].second.tokens);
      for (int rep = 0; rep < 4; ++rep) {
        b.fill_random_f32(m.act.x.data(), cases[c].second.tokens * d.hidden, 99, 1.0f);
        PhaseTimer scratch_timer;
        run_layer(b, d, m.layers[0], m.act, m.caches[0], cases[c].second, m.routing,
                  rep == 0 ? &scratch_timer : &timers[c]);  // first run: warm-up
      }
    }
    fmt::print("one layer, ms per phase:");
    for (const auto& c : cases) fmt::print(" | {:>16}", c.first);
    fmt::print("\n");
    for (int i = 0; i < PhaseTimer::kPhases; ++i) {
      fmt::print("  {:<25}", PhaseTimer::kNames[i]);
      std::string row = fmt::format("\"phase\": \"{}\"", PhaseTimer::kNames[i]);
      for (size_t c = 0; c < cases.size(); ++c) {
        fmt::print(" | {:>16.3f}", timers[c].total_ms[i] / 3);
        row += fmt::format(", \"{}_ms\": {:.4f}", cases[c].first, timers[c].total_ms[i] / 3);
      }
      fmt::print("\n");
      json.add("layer_phases", row);
    }
  }
  const int64_t used = b.device_used_bytes() - used0;
  const size_t alloc = b.allocated_bytes() - alloc0;
  fmt::print(
      "memory: weights + KV (analytic) {:.2f} GB | backend allocations {:.2f} GB (with "
      "activations; scratch/staging {:.2f} GB) | cudaMemGetInfo delta {:.2f} GB\n",
      (weight_bytes + kv_bytes) * 1e-9, alloc * 1e-9, b.internal_bytes() * 1e-9, used * 1e-9);
  json.add("memory", fmt::format("\"layers\": {}, \"analytic_weights_kv_bytes\": {}, "
                                 "\"backend_allocated_bytes\": {}, \"device_used_delta_bytes\": {}",
                                 L, weight_bytes + kv_bytes, alloc, used));
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      MOE_CHECK(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--layers") {
      o.layers = std::stoll(next());
    } else if (a == "--prefill-len") {
      o.prefill_len = std::stoll(next());
    } else if (a == "--context") {
      o.context = std::stoll(next());
    } else if (a == "--json") {
      o.json = next();
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--model-only") {
      o.model_only = true;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: gpu_bench [--layers N] [--prefill-len L] [--context C] [--json FILE] "
          "[--quick] [--model-only]\n");
      std::exit(0);
    } else {
      MOE_THROW("usage", "unknown argument {}", a);
    }
  }
  MOE_CHECK(o.layers >= 1 && o.prefill_len >= 1 && o.context >= 0, "bad sizes");
  return o;
}

int run(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  if (kernels::cuda_device_count() == 0) {
    std::printf("gpu_bench: no CUDA device visible\n");
    return 2;
  }
  auto backend = kernels::make_cuda_backend(0);
  CudaBackend& b = *kernels::as_cuda_backend(backend.get());
  cudaDeviceProp prop{};
  MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, b.device()));
  const std::string device =
      fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", prop.name, prop.major, prop.minor,
                  prop.multiProcessorCount, prop.totalGlobalMem / double(1 << 30));
  fmt::print("gpu_bench on {}\n", device);
  JsonOut json;
  const double bw = copy_bandwidth(b, json);
  Dims d;
  if (!opt.model_only) grouped_vs_dense(b, d, opt, bw, json);
  model_bench(b, opt, bw, json);
  json.write(opt.json, device);
  return 0;
}

}  // namespace
}  // namespace moe::bench

int main(int argc, char** argv) {
  try {
    return moe::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_bench: %s\n", e.what());
    return 1;
  }
}
