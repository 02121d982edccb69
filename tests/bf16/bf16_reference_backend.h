// The GPU's numerics on the naive reference ops: tests/gpu's ReferenceBackend rounding to bf16 at
// the points of a rounding statement (by default kernels/common/rounding.h's; tests flip single
// points to show their inputs detect each one). Ops that do not round are the reference's. An
// e4m3 weight enters a bf16 GEMM as bf16(dequantised value), as on the GPU.
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

class Bf16ReferenceBackend final : public ReferenceBackend {
 public:
  explicit Bf16ReferenceBackend(RoundingPoints points = {})
      : ReferenceBackend({"reference-bf16", true, KvDtype::kF32, ComputeDtype::kBF16}),
        p_(points) {}

  void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y,
              const bf16* /*x_bf16*/ = nullptr) override {
    const std::vector<float> xr = maybe_round(x, rows * in, p_.linear_input);
    const std::vector<bf16> wb = as_bf16(w, out, in);
    cpu::reference::linear(xr.data(), wb.empty() ? w : WeightView(wb.data()), rows, in, out, y);
    if (p_.linear_output) round_inplace(y, rows * out);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionBatch& batch,
                 AttentionShape shape, KvCacheView cache, float* out) override {
    const int64_t n = batch.num_rows * shape.num_kv_heads * shape.head_dim;
    const std::vector<float> kr = maybe_round(k, n, p_.kv_cache_append);
    const std::vector<float> vr = maybe_round(v, n, p_.kv_cache_append);
    cpu::reference::attention(q, kr.data(), vr.data(), batch.seqs, batch.num_seqs, shape, cache,
                              out);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    for (int64_t r = 0; r < rows; ++r) {
      swiglu_row(x + r * hidden, w, hidden, inter, p_.dense, y + r * hidden);
    }
  }

 protected:
  void grouped_swiglu(const float* x, const bf16* x_bf16, int64_t hidden, int64_t inter,
                      const ExpertGroup* groups, int64_t num_groups, const int32_t* row_index,
                      float* out, bf16* out_bf16) override {
    std::vector<float> widened(static_cast<size_t>(hidden)), row(static_cast<size_t>(hidden));
    for (int64_t g = 0; g < num_groups; ++g) {
      for (int64_t p = groups[g].begin; p < groups[g].begin + groups[g].count; ++p) {
        const int64_t at = static_cast<int64_t>(row_index[p]) * hidden;
        if (x_bf16 != nullptr) {
          for (int64_t c = 0; c < hidden; ++c) widened[c] = bf16_to_float(x_bf16[at + c]);
        }
        float* y = out_bf16 != nullptr ? row.data() : out + p * hidden;
        swiglu_row(x_bf16 != nullptr ? widened.data() : x + at, groups[g].weights, hidden, inter,
                   p_.grouped, y);
        if (out_bf16 != nullptr) {
          for (int64_t c = 0; c < hidden; ++c) out_bf16[p * hidden + c] = float_to_bf16(y[c]);
        }
      }
    }
  }

 private:
  static void round_inplace(float* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) v[i] = round_to_bf16(v[i]);
  }
  // bf16(dequantised) values of an e4m3 matrix [rows, cols]; empty for a bf16 one.
  static std::vector<bf16> as_bf16(WeightView w, int64_t rows, int64_t cols) {
    std::vector<bf16> out;
    if (!w.is_e4m3()) return out;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        out.push_back(float_to_bf16(e4m3_matrix_value(w.codes(), w.scales, cols, r, c)));
      }
    }
    return out;
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
    const std::vector<bf16> gb = as_bf16(w.gate, inter, hidden), ub = as_bf16(w.up, inter, hidden),
                            db = as_bf16(w.down, hidden, inter);
    if (!gb.empty()) w.gate = WeightView(gb.data());
    if (!ub.empty()) w.up = WeightView(ub.data());
    if (!db.empty()) w.down = WeightView(db.data());
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
};

}  // namespace moe::kernels::test
