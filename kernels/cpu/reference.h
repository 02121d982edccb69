// Naive loop versions of every op in ops.h (same signatures, same contracts), written to be
// obviously correct rather than fast: dot products accumulate in double, no blocking, no BLAS.
// Used by the unit tests as ground truth and as executable documentation of the semantics.
#pragma once

#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/op_args.h"

namespace moe::kernels::cpu::reference {

// Exact bf16 -> fp32 (bits << 16).
void bf16_to_f32(const bf16* src, int64_t n, float* dst);
// fp32 -> bf16 by comparing the two neighbouring bf16 values (ties to even mantissa); NaN maps to
// a quiet NaN with the same sign and top payload bits, overflow past the largest bf16 to inf.
void f32_to_bf16(const float* src, int64_t n, bf16* dst);

void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
               float* out);
void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps, float* y);
void linear(const float* x, const bf16* w, int64_t rows, int64_t in, int64_t out, float* y);
// inv_freq[i] = 1 / theta^(2i/head_dim) and angle = pos * inv_freq[i], both in float32 as
// HF transformers computes them; cos/sin in float32.
void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
          double theta);
void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
               int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out);
void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                 int32_t* ids, float* weights);
void silu_mul(const float* gate, const float* up, int64_t n, float* out);
void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                float* y);
// Computed one entry at a time (no grouping): out[p] = expert_g(x[row_index[p]]).
void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter, const ExpertGroup* groups,
                           int64_t num_groups, const int32_t* row_index, float* out);
void add_inplace(float* x, const float* y, int64_t n);
void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n, float* dst);
// Sums in j order starting from 0.0f, in fp32 (the contract is fp32 order, not double).
void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                      const float* weights, const int64_t* offsets, int64_t n, float* dst);

}  // namespace moe::kernels::cpu::reference
