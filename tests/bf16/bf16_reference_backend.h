// The GPU's numerics on the naive reference ops: a Backend that wraps tests/gpu's
// ReferenceBackend and rounds to bf16 at the points of a rounding statement (by default
// kernels/common/rounding.h's; tests flip single points to show their inputs detect each one).
// Ops that do not round are forwarded unchanged.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/common/rounding.h"
#include "kernels/cpu/reference.h"
#include "tests/gpu/reference_backend.h"

namespace moe::kernels::test {

struct RoundingPoints {
  bool linear_input = rounding::kLinearInput;
  bool linear_output = rounding::kLinearOutput;
  bool kv_cache_append = rounding::kKvCacheAppend;
  rounding::SwigluRounding dense = rounding::kDenseSwiglu;
  rounding::SwigluRounding grouped = rounding::kGroupedSwiglu;
};

class Bf16ReferenceBackend final : public Backend {
 public:
  explicit Bf16ReferenceBackend(RoundingPoints points = {}) : p_(points) {}
  std::string name() const override { return "reference-bf16"; }
  bool is_host_memory() const override { return true; }
  ComputeDtype compute_dtype() const override { return ComputeDtype::kBF16; }
  void* allocate(size_t n) override { return ref_.allocate(n); }
  void deallocate(void* ptr, size_t n) noexcept override { ref_.deallocate(ptr, n); }
  void upload(void* d, const void* s, size_t n) override { ref_.upload(d, s, n); }
  void download(void* d, const void* s, size_t n) override { ref_.download(d, s, n); }
  void copy(void* d, const void* s, size_t n) override { ref_.copy(d, s, n); }
  void fill_zero(void* d, size_t n) override { ref_.fill_zero(d, n); }
  void synchronize() override {}

  void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
                 float* out) override {
    ref_.embedding(table, vocab, hidden, ids, n, out);
  }
  void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
               float* y) override {
    ref_.rmsnorm(x, w, rows, dim, eps, y);
  }
  void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
            double theta) override {
    ref_.rope(x, positions, rows, heads, head_dim, theta);
  }
  void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                   int32_t* ids, float* weights) override {
    ref_.router_topk(logits, rows, experts, k, renormalise, ids, weights);
  }
  void add_inplace(float* x, const float* y, int64_t n) override { ref_.add_inplace(x, y, n); }
  void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                   float* dst) override {
    ref_.gather_rows(src, width, idx, n, dst);
  }
  void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                        const float* weights, const int64_t* offsets, int64_t n,
                        float* dst) override {
    ref_.weighted_row_sum(src, width, src_index, weights, offsets, n, dst);
  }

  void linear(const float* x, const bf16* w, int64_t rows, int64_t in, int64_t out,
              float* y) override {
    const std::vector<float> xr = maybe_round(x, rows * in, p_.linear_input);
    ref_.linear(xr.data(), w, rows, in, out, y);
    if (p_.linear_output) round_inplace(y, rows * out);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                 int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) override {
    int64_t rows = 0;
    for (int64_t s = 0; s < num_seqs; ++s) {
      rows = std::max(rows, seqs[s].row_begin + seqs[s].num_new);
    }
    const int64_t n = rows * shape.num_kv_heads * shape.head_dim;
    const std::vector<float> kr = maybe_round(k, n, p_.kv_cache_append);
    const std::vector<float> vr = maybe_round(v, n, p_.kv_cache_append);
    ref_.attention(q, kr.data(), vr.data(), seqs, num_seqs, shape, cache, out);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    for (int64_t r = 0; r < rows; ++r) {
      swiglu_row(x + r * hidden, w, hidden, inter, p_.dense, y + r * hidden);
    }
  }
  void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                             const ExpertGroup* groups, int64_t num_groups,
                             const int32_t* row_index, float* out) override {
    for (int64_t g = 0; g < num_groups; ++g) {
      for (int64_t p = groups[g].begin; p < groups[g].begin + groups[g].count; ++p) {
        swiglu_row(x + static_cast<int64_t>(row_index[p]) * hidden, groups[g].weights, hidden,
                   inter, p_.grouped, out + p * hidden);
      }
    }
  }

 private:
  static void round_inplace(float* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) v[i] = round_to_bf16(v[i]);
  }
  static std::vector<float> maybe_round(const float* v, int64_t n, bool round) {
    std::vector<float> out(v, v + n);
    if (round) round_inplace(out.data(), n);
    return out;
  }
  // One row of down(silu(gate(x)) * up(x)) with the stages `r` marks stored in bf16.
  static void swiglu_row(const float* x, ExpertWeights w, int64_t hidden, int64_t inter,
                         rounding::SwigluRounding r, float* y) {
    const std::vector<float> xr = maybe_round(x, hidden, r.input);
    std::vector<float> gate(static_cast<size_t>(inter)), up(static_cast<size_t>(inter));
    cpu::reference::linear(xr.data(), w.gate, 1, hidden, inter, gate.data());
    cpu::reference::linear(xr.data(), w.up, 1, hidden, inter, up.data());
    if (r.gate_up) {
      round_inplace(gate.data(), inter);
      round_inplace(up.data(), inter);
    }
    cpu::reference::silu_mul(gate.data(), up.data(), inter, gate.data());
    if (r.activation) round_inplace(gate.data(), inter);
    cpu::reference::linear(gate.data(), w.down, 1, inter, hidden, y);
    if (r.output) round_inplace(y, hidden);
  }

  RoundingPoints p_;
  ReferenceBackend ref_;
};

}  // namespace moe::kernels::test
