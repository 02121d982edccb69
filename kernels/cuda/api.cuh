// Launch API of the CUDA kernels: raw device pointers, sizes in elements, a stream; no knowledge
// of ranks, files, the model or the Backend class. Every function only enqueues work and returns
// the launch status (cudaGetLastError), so callers wrap it in MOE_CUDA_CHECK. Index arrays passed
// here are DEVICE memory (the backend stages host metadata first). Plain C++ header: the host
// compiler includes it too.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/attention_tc_math.h"
#include "kernels/op_args.h"

namespace moe::kernels::cuda {

// y [n] = bf16(x) round-to-nearest-even; and back (exact).
cudaError_t launch_f32_to_bf16(const float* x, int64_t n, bf16* y, cudaStream_t stream);
cudaError_t launch_bf16_to_f32(const bf16* x, int64_t n, float* y, cudaStream_t stream);

// out [n, hidden] = float(table [vocab, hidden] rows ids[0..n)). ids checked by the caller.
cudaError_t launch_embedding(const bf16* table, int64_t hidden, const int32_t* ids, int64_t n,
                             float* out, cudaStream_t stream);

// y [rows, dim] = x * rsqrt(mean(x^2) + eps) * w, fp32 (x and y may alias).
cudaError_t launch_rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                           float* y, cudaStream_t stream);

// Rotate-half RoPE in place on x [rows, heads, head_dim]; inv_freq [head_dim / 2] precomputed on
// the host in fp32 (as HF does), angle = float(positions[r]) * inv_freq[i] in fp32.
cudaError_t launch_rope(float* x, const int32_t* positions, const float* inv_freq, int64_t rows,
                        int64_t heads, int64_t head_dim, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i]; fp32 in and out, or bf16 in and out (fp32 math), or fp32 in
// and bf16 out (the input of a bf16 down projection).
cudaError_t launch_silu_mul(const float* gate, const float* up, int64_t n, float* out,
                            cudaStream_t stream);
cudaError_t launch_silu_mul_bf16(const bf16* gate, const bf16* up, int64_t n, bf16* out,
                                 cudaStream_t stream);
cudaError_t launch_silu_mul_to_bf16(const float* gate, const float* up, int64_t n, bf16* out,
                                    cudaStream_t stream);

// x[i] += y[i].
cudaError_t launch_add_inplace(float* x, const float* y, int64_t n, cudaStream_t stream);

// dst [n, width] = src rows idx[0..n).
cudaError_t launch_gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                               float* dst, cudaStream_t stream);
// dst [n, width] bf16 row j = bf16(x[row_index[pair[j]]]), or x_bf16[row_index[pair[j]]] when
// x_bf16 is not null; pair[j] < 0 gives a zero row (the grouped GEMM's gather when row_index
// lives on the device).
cudaError_t launch_gather_pairs_to_bf16(const float* x, const bf16* x_bf16, int64_t width,
                                        const int32_t* pair, const int32_t* row_index, int64_t n,
                                        bf16* dst, cudaStream_t stream);
// dst rows dst_idx[i] = float(src [n, width] row i), or dst_bf16 rows = src row i as it is when
// dst_bf16 is given (dst then unused); dst_idx[i] < 0 is skipped.
cudaError_t launch_scatter_rows_from_bf16(const bf16* src, int64_t width, const int32_t* dst_idx,
                                          int64_t n, float* dst, bf16* dst_bf16,
                                          cudaStream_t stream);

// Router: fp32 softmax over experts of logits [rows, experts], top-k by probability (ties to the
// lower id), optional renormalisation. ids/weights [rows, k] in device memory. A row whose
// softmax sum is not finite gets ids -1 (the caller turns that into an error).
// Needs experts <= kRouterMaxExperts.
inline constexpr int64_t kRouterMaxExperts = 2048;
cudaError_t launch_router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k,
                               bool renormalise, int32_t* ids, float* weights, cudaStream_t stream);

// Attention (see attention_plan.h for the work decomposition). kv_append rounds new rows of
// k/v [T, kv_width] (fp32) into bf16 cache rows; attention runs the work items over the bf16
// cache with fp32 math; combine merges split rows.
cudaError_t launch_kv_append(const float* k, const float* v, int64_t kv_width,
                             const KvAppendRow* rows, int64_t n, bf16* cache_k, bf16* cache_v,
                             cudaStream_t stream);
cudaError_t launch_attention(const float* q, const bf16* cache_k, const bf16* cache_v,
                             AttentionShape shape, const AttentionWorkItem* items,
                             int64_t num_items, float* out, float* partial_o, float* partial_ml,
                             cudaStream_t stream);
cudaError_t launch_attention_combine(const AttentionCombineRow* rows, int64_t n,
                                     AttentionShape shape, const float* partial_o,
                                     const float* partial_ml, float* out, cudaStream_t stream);

// Tensor-core prefill attention (attention_tc.cu): one CTA per item (attention_tc_plan.h) over
// the bf16 cache, head_dim kTcHeadDim only, sm_80+. q rounded to bf16 for QK^T, P rounded to bf16
// for PV, fp32 accumulation and softmax. Writes out rows of the items' sequences directly (no
// split); the KV append runs first. cache_k/cache_v must be 16-byte aligned.
cudaError_t launch_attention_tc(const float* q, const bf16* cache_k, const bf16* cache_v,
                                AttentionShape shape, const AttentionTcItem* items,
                                int64_t num_items, float* out, cudaStream_t stream);

// Graph-safe decode attention: seqs [num_seqs] in DEVICE memory; the grids depend only on
// (num_rows, shape, splits), so a captured launch replays with new lengths. kv_append_fixed_grid
// writes bf16(k/v row r) at the cache position seqs gives row r; attention_fixed_grid runs the
// fixed key splits (fixed_grid_splits) into partial_o [num_rows * splits.num_splits, H, D] and
// partial_ml [.., H, 2], then merges each row's live splits into out [num_rows, H, D] (fp32,
// same numerics as launch_attention). Rows no valid sequence covers append nothing, output 0.
cudaError_t launch_kv_append_fixed_grid(const float* k, const float* v, int64_t kv_width,
                                        const AttentionSeq* seqs, int64_t num_seqs,
                                        int64_t num_rows, int64_t num_slots, int64_t max_len,
                                        bf16* cache_k, bf16* cache_v, cudaStream_t stream);
cudaError_t launch_attention_fixed_grid(const float* q, const bf16* cache_k, const bf16* cache_v,
                                        AttentionShape shape, const AttentionSeq* seqs,
                                        int64_t num_seqs, int64_t num_rows, int64_t num_slots,
                                        int64_t max_len, FixedGridSplits splits, float* partial_o,
                                        float* partial_ml, float* out, cudaStream_t stream);

// Deterministic pseudo-random fill (hash of seed and index), uniform in [-scale, scale]: for
// benchmarks that need 60 GB of synthetic weights without a host round trip.
cudaError_t launch_fill_random_bf16(bf16* dst, int64_t n, uint64_t seed, float scale,
                                    cudaStream_t stream);
cudaError_t launch_fill_random_f32(float* dst, int64_t n, uint64_t seed, float scale,
                                   cudaStream_t stream);

// ---- Fused kernels (fused.cu, expert_small.cu; per-thread math in fused_math.h) ----

// Row RMSNorm, one block per row: with delta == nullptr, y = rmsnorm(x_in); else x_io += delta
// first and y = rmsnorm(x_io) (x_in unused). y_bf16 (nullable) also receives bf16(y). x and y
// may alias.
cudaError_t launch_norm_rows(float* x_io, const float* x_in, const float* delta, const bf16* w,
                             int64_t rows, int64_t dim, float eps, float* y, bf16* y_bf16,
                             cudaStream_t stream);
// In place: per-head RMSNorm of q [rows, heads, head_dim] and k [rows, kv_heads, head_dim], then
// rotate-half RoPE at positions[rows] with inv_freq [head_dim / 2] (both device memory).
// Needs qk_fused_head_dim_ok(head_dim) (else cudaErrorInvalidValue, nothing launched).
cudaError_t launch_qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                                const int32_t* positions, const float* inv_freq, int64_t rows,
                                int64_t heads, int64_t kv_heads, int64_t head_dim, float eps,
                                cudaStream_t stream);
// qkv [rows, q_width + 2 kv_width] -> q [rows, q_width], k and v [rows, kv_width].
cudaError_t launch_split_qkv(const float* qkv, int64_t rows, int64_t q_width, int64_t kv_width,
                             float* q, float* k, float* v, cudaStream_t stream);
// Small-batch expert SwiGLU over a grouping in device memory (ExpertBatch): pairs
// [slot_begin[s], slot_begin[s + 1]) use slot_weights[s] (device table); act [max_pairs, inter]
// is bf16 scratch; out [max_pairs, hidden] rows of the pairs present. max_active_slots bounds the
// slots with rows (grid rows). x rows are read from x_bf16 when it is not null (bf16 values),
// else rounded from x. Needs expert_small_shape_ok, 16-byte aligned x (or x_bf16), act and
// weights, and 1 <= rows_per_pass <= kExpertRowsPerPass.
cudaError_t launch_expert_swiglu_small(const float* x, const bf16* x_bf16, int64_t hidden,
                                       int64_t inter, const int32_t* row_index,
                                       const int32_t* slot_begin, const ExpertWeights* slot_weights,
                                       int64_t num_slots, int64_t max_active_slots,
                                       int rows_per_pass, bf16* act, float* out, bf16* out_bf16,
                                       cudaStream_t stream);

// ---- e4m3 weights (expert_small.cu, fp8_convert.cu; bodies in kernels/common/fp8.h) ----

// y [rows, out] (fp32) = x [rows, in] . w^T for a few rows (the fused dequantise-and-multiply of
// decode): x rounded to bf16 (or x_bf16 when given), w's values as bf16(dequantised), fp32
// accumulation. Needs linear_small_shape_ok(in), 16-byte aligned x_bf16 rows and 8-byte aligned
// e4m3 rows (any rows count; passes of linear_rows_per_pass rows).
cudaError_t launch_linear_small(const float* x, const bf16* x_bf16, WeightView w, int64_t in,
                                int64_t out, int64_t rows, float* y, cudaStream_t stream);
// out [rows, cols] = bf16(dequantised w), for a bf16 GEMM of an e4m3 weight.
cudaError_t launch_dequantise_e4m3(WeightView w, int64_t rows, int64_t cols, bf16* out,
                                   cudaStream_t stream);
// Rows of x [rows, cols] (fp32, or x_bf16 when x is null) quantised in 1 x 128 groups: q [rows,
// cols] e4m3 codes, scales [ceil(cols / 128), rows] (one per group, row index fastest).
cudaError_t launch_quantise_rows_e4m3(const float* x, const bf16* x_bf16, int64_t rows,
                                      int64_t cols, uint8_t* q, float* scales, cudaStream_t stream);

}  // namespace moe::kernels::cuda
