// The CPU backend's bf16 compute mode: the ops that round (linear, the SwiGLU MLPs, attention's
// KV append) with activations rounded to bf16 exactly where kernels/common/rounding.h says, bf16
// weights used as loaded (no fp32 copy; e4m3 weights as bf16(dequantised), a block of rows at a
// time), fp32 accumulation. GEMMs run through oneDNN where it has
// a bf16 matmul for this CPU; elsewhere on a fixed-order fp32 dot-product GEMM over the same
// bf16-valued operands (weights widened in L2-sized blocks): products are exact either way, so
// only the fp32 summation order differs. The fallback's result for a row never depends on the
// other rows of the call.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/cpu/onednn_gemm.h"
#include "kernels/op_args.h"

namespace moe::kernels::cpu {

class Bf16Ops {
 public:
  // Uses oneDNN when onednn_info().has_bf16_matmul, unless force_fallback. Without bf16 matmul
  // units it says so once per process on stderr (rank 0 only, see check.h's error_rank).
  explicit Bf16Ops(bool force_fallback = false);
  ~Bf16Ops();
  Bf16Ops(const Bf16Ops&) = delete;
  Bf16Ops& operator=(const Bf16Ops&) = delete;

  bool uses_onednn() const { return onednn_ != nullptr; }
  int64_t num_primitives() const { return onednn_ ? onednn_->num_primitives() : 0; }

  // Same shapes and contracts as ops.h; the rounding points are rounding.h's.
  void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y);
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y);
  // x_bf16 (nullable): the rows as bf16 values, copied into the GEMM block instead of rounding
  // x's (same values; x may then be null). out_bf16 (nullable): the down GEMM's bf16 rows copied
  // there as they are instead of widened into out (same values; out may then be null).
  void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                             const ExpertGroup* groups, int64_t num_groups,
                             const int32_t* row_index, float* out, const bf16* x_bf16 = nullptr,
                             bf16* out_bf16 = nullptr);
  void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                 int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out);

 private:
  // Rows the GEMM buffers of an m-row call hold (oneDNN's padded bucket, else m).
  int64_t padded(int64_t m) const;
  // c [m, n] = a [m, k] . w^T with a bf16 of padded(m) rows (rows past m zero); c fp32 or bf16
  // (exactly one non-null) of padded(m) rows. e4m3 weights enter as bf16(dequantised), a block
  // of rows at a time (weight_rows.h).
  void gemm(const bf16* a, WeightView w, int64_t m, int64_t n, int64_t k, float* c_f32,
            bf16* c_bf16);
  // gemm() through oneDNN for e4m3 weights: blocks of rows dequantised, their columns of c.
  void gemm_e4m3_blocks(const bf16* a, WeightView w, int64_t m, int64_t n, int64_t k, float* c_f32,
                        bf16* c_bf16);

  std::unique_ptr<OnednnBf16Gemm> onednn_;
  // Scratch, grown on demand, never shrunk: [padded rows, width] per stage.
  std::vector<bf16> x_b_, gate_b_, up_b_, act_b_, down_b_, w_b_;
  std::vector<unsigned char> c_block_;  // one block of c columns (fp32 or bf16)
  std::vector<float> gate_f_, up_f_, out_f_, a_f_, w_f_, k_f_, v_f_;
};

}  // namespace moe::kernels::cpu
