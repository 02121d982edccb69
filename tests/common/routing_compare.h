// Whole-model logits against a reference when the two runs may route some tokens differently
// (bf16 vs fp32, GPU vs CPU): a routing flip changes a token's hidden state by far more than the
// rounding that caused it, so errors are measured only where routing agrees, and the flipped
// share and top-1 agreement are reported beside it. RoutingRecorder gets a run's routing without
// touching the model: it wraps any Backend and keeps what router_topk returned.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace moe::test {

// Top-k expert ids of every position in every MoE layer: layers[l][position * top_k + j].
struct Routing {
  int64_t top_k = 0;
  std::vector<std::vector<int32_t>> layers;

  int64_t num_positions() const {
    return layers.empty() || top_k == 0 ? 0 : static_cast<int64_t>(layers[0].size()) / top_k;
  }
  // The same set of experts (order aside) in every layer at this position.
  bool agrees_at(const Routing& other, int64_t pos) const {
    if (layers.size() != other.layers.size() || top_k != other.top_k) return false;
    for (size_t l = 0; l < layers.size(); ++l) {
      std::vector<int32_t> a(layers[l].begin() + pos * top_k,
                             layers[l].begin() + (pos + 1) * top_k);
      std::vector<int32_t> b(other.layers[l].begin() + pos * top_k,
                             other.layers[l].begin() + (pos + 1) * top_k);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      if (a != b) return false;
    }
    return true;
  }
};

struct RoutingComparison {
  int64_t positions = 0;
  int64_t agreeing = 0;   // positions whose routing agrees with the reference in every layer
  int64_t top1_same = 0;  // positions whose argmax agrees with the reference's
  // Max over agreeing positions of max_v |got - want| / max_v |want| (per position row).
  double max_rel_diff_agreeing = 0;

  double flipped_share() const {
    return positions == 0 ? 0.0 : 1.0 - static_cast<double>(agreeing) / positions;
  }
  double top1_agreement() const {
    return positions == 0 ? 1.0 : static_cast<double>(top1_same) / positions;
  }
  RoutingComparison& operator+=(const RoutingComparison& o) {
    positions += o.positions;
    agreeing += o.agreeing;
    top1_same += o.top1_same;
    max_rel_diff_agreeing = std::max(max_rel_diff_agreeing, o.max_rel_diff_agreeing);
    return *this;
  }
  std::string summary() const {
    std::ostringstream s;
    s << positions << " positions: routing flipped at " << (positions - agreeing) << " ("
      << 100.0 * flipped_share() << "%), max rel diff on agreeing positions "
      << max_rel_diff_agreeing << ", top-1 agreement " << 100.0 * top1_agreement() << "%";
    return s.str();
  }
};

// got and want are [positions, vocab]; routings cover the same positions in the same order.
inline RoutingComparison compare_with_routing(const float* got, const float* want,
                                              int64_t positions, int64_t vocab,
                                              const Routing& got_routing,
                                              const Routing& want_routing) {
  RoutingComparison c;
  c.positions = positions;
  for (int64_t p = 0; p < positions; ++p) {
    const float* g = got + p * vocab;
    const float* w = want + p * vocab;
    if (std::max_element(g, g + vocab) - g == std::max_element(w, w + vocab) - w) ++c.top1_same;
    if (!got_routing.agrees_at(want_routing, p)) continue;
    ++c.agreeing;
    double diff = 0, ref = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      diff = std::max(diff, std::fabs(static_cast<double>(g[v]) - w[v]));
      ref = std::max(ref, std::fabs(static_cast<double>(w[v])));
    }
    c.max_rel_diff_agreeing = std::max(c.max_rel_diff_agreeing, ref > 0 ? diff / ref : diff);
  }
  return c;
}

// Forwards every op to `inner` and keeps router_topk's ids: one Routing layer per call, so a
// model step over T tokens adds its MoE layers in order, each [T, top_k].
class RoutingRecorder final : public kernels::Backend {
 public:
  explicit RoutingRecorder(std::unique_ptr<kernels::Backend> inner) : inner_(std::move(inner)) {}
  const Routing& routing() const { return routing_; }
  void clear() { routing_ = {}; }
  kernels::Backend& inner() { return *inner_; }

  std::string name() const override { return inner_->name(); }
  bool is_host_memory() const override { return inner_->is_host_memory(); }
  kernels::KvDtype kv_cache_dtype() const override { return inner_->kv_cache_dtype(); }
  kernels::ComputeDtype compute_dtype() const override { return inner_->compute_dtype(); }
  int64_t device_used_bytes() const override { return inner_->device_used_bytes(); }
  void* compute_stream() const override { return inner_->compute_stream(); }
  std::unique_ptr<kernels::PhaseTimer> make_phase_timer(int num_phases) override {
    return inner_->make_phase_timer(num_phases);
  }
  void* allocate(size_t n) override { return inner_->allocate(n); }
  void deallocate(void* p, size_t n) noexcept override { inner_->deallocate(p, n); }
  void upload(void* d, const void* s, size_t n) override { inner_->upload(d, s, n); }
  void download(void* d, const void* s, size_t n) override { inner_->download(d, s, n); }
  void copy(void* d, const void* s, size_t n) override { inner_->copy(d, s, n); }
  void fill_zero(void* d, size_t n) override { inner_->fill_zero(d, n); }
  void synchronize() override { inner_->synchronize(); }

  void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
                 float* out) override {
    inner_->embedding(table, vocab, hidden, ids, n, out);
  }
  void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
               float* y) override {
    inner_->rmsnorm(x, w, rows, dim, eps, y);
  }
  void linear(const float* x, const bf16* w, int64_t rows, int64_t in, int64_t out,
              float* y) override {
    inner_->linear(x, w, rows, in, out, y);
  }
  void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
            double theta) override {
    inner_->rope(x, positions, rows, heads, head_dim, theta);
  }
  void attention(const float* q, const float* k, const float* v, const kernels::AttentionSeq* seqs,
                 int64_t num_seqs, kernels::AttentionShape shape, kernels::KvCacheView cache,
                 float* out) override {
    inner_->attention(q, k, v, seqs, num_seqs, shape, cache, out);
  }
  void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                   int32_t* host_ids, float* host_weights) override {
    inner_->router_topk(logits, rows, experts, k, renormalise, host_ids, host_weights);
    routing_.top_k = k;
    routing_.layers.emplace_back(host_ids, host_ids + std::max<int64_t>(rows, 0) * k);
  }
  void swiglu_mlp(const float* x, kernels::ExpertWeights w, int64_t rows, int64_t hidden,
                  int64_t inter, float* y) override {
    inner_->swiglu_mlp(x, w, rows, hidden, inter, y);
  }
  void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                             const kernels::ExpertGroup* groups, int64_t num_groups,
                             const int32_t* row_index, float* out) override {
    inner_->grouped_expert_swiglu(x, hidden, inter, groups, num_groups, row_index, out);
  }
  void add_inplace(float* x, const float* y, int64_t n) override { inner_->add_inplace(x, y, n); }
  void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                   float* dst) override {
    inner_->gather_rows(src, width, idx, n, dst);
  }
  void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                        const float* weights, const int64_t* offsets, int64_t n,
                        float* dst) override {
    inner_->weighted_row_sum(src, width, src_index, weights, offsets, n, dst);
  }

 private:
  std::unique_ptr<kernels::Backend> inner_;
  Routing routing_;
};

}  // namespace moe::test
