// Model arithmetic: parameter counts by role, the bytes of the weights as stored (bf16, or e4m3
// with block scales where the config's quantization_config says so), the weights each rank holds
// under a placement, and FLOPs per operation. The one home of these facts: the Model (load sizes,
// progress line, FLOP counter), `plan`, the run report's "vs plan" line and the benchmarks all
// call these functions. Counts follow the checkpoint's tensor list (docs/qwen3_moe.md).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/op_args.h"
#include "parallel/placement.h"
#include "runtime/io/config.h"

namespace moe::runtime {

// Bytes of one bf16 weight element (every weight a config does not make FP8).
inline constexpr int64_t kWeightBytes = 2;

// Bytes of a [rows, cols] weight matrix stored as `dtype`: bf16 2 per element; e4m3 1 per
// element plus one fp32 scale per 128 x 128 block (kernels/common/fp8.h).
int64_t weight_matrix_bytes(int64_t rows, int64_t cols, kernels::WeightDtype dtype);

// Parameters by role (each over the whole model).
struct ParamBreakdown {
  int64_t embedding = 0;    // vocab x H
  int64_t lm_head = 0;      // vocab x H; 0 when tied to the embedding
  int64_t final_norm = 0;   // H
  int64_t attention = 0;    // q,k,v,o projections + q_norm, k_norm, all layers
  int64_t layer_norms = 0;  // input + post-attention RMSNorm weights, all layers
  int64_t router = 0;       // E x H per MoE layer
  int64_t experts = 0;      // E x 3 H I per MoE layer
  int64_t dense_mlp = 0;    // 3 H intermediate_size per dense layer
  int64_t per_expert = 0;   // 3 H I: one expert of one layer
  int64_t num_moe_layers = 0;
  int64_t num_dense_layers = 0;
  int64_t total = 0;

  int64_t dense_replica() const { return total - experts; }  // what every rank holds
};

ParamBreakdown count_params(const ModelConfig& config);
// Parameters of one layer's attention block (q, k, v, o + q_norm, k_norm).
int64_t attention_params_per_layer(const ModelConfig& config);
// Embedding and lm_head count as active (lm_head not again when tied). 0 <= k <= num_experts.
int64_t count_active_params(const ModelConfig& config, int64_t top_k);
// Active parameters used in a matmul per token (the embedding is a lookup, norms are
// element-wise; a tied lm_head still multiplies by the vocab x H embedding).
int64_t matmul_params_per_token(const ModelConfig& config, int64_t top_k);

// Bytes of the weights by role as config.quantization stores them (its per-module exceptions
// applied layer by layer).
struct WeightBytes {
  int64_t embedding = 0, lm_head = 0, final_norm = 0, attention = 0, layer_norms = 0, router = 0,
          experts = 0, dense_mlp = 0;
  std::vector<int64_t> per_expert;  // [layers] one expert of layer l (0 for a dense layer)
  int64_t total() const {
    return embedding + lm_head + final_norm + attention + layer_norms + router + experts +
           dense_mlp;
  }
  int64_t dense_replica() const { return total() - experts; }  // what every rank holds
};
WeightBytes weight_bytes(const ModelConfig& config);
// Weight bytes one token reads at top_k (count_active_params' tensors, as stored).
int64_t active_weight_bytes(const ModelConfig& config, const WeightBytes& bytes, int64_t top_k);

// Weights one rank holds: the dense replica plus its expert slots (replicas included), with the
// bytes they take as stored.
struct RankWeights {
  int64_t dense_params = 0;
  int64_t expert_slots = 0;  // summed over MoE layers
  int64_t expert_params = 0;
  int64_t dense_weight_bytes = 0;
  int64_t expert_weight_bytes = 0;
  int64_t dense_bytes() const { return dense_weight_bytes; }
  int64_t expert_bytes() const { return expert_weight_bytes; }
  int64_t total_bytes() const { return dense_bytes() + expert_bytes(); }
};
RankWeights rank_weights(const ModelConfig& config, const parallel::Placement& placement, int rank);
// Expert slots each rank holds, summed over the MoE layers.
std::vector<int64_t> expert_slots_per_rank(const ModelConfig& config,
                                           const parallel::Placement& placement);

// FLOPs (2 per multiply-add) of the forward's pieces, for one layer unless named otherwise.
// q, k, v, o projections of `tokens` tokens.
double projection_flops(const ModelConfig& config, int64_t tokens);
// QK^T and PV over the causal window of `new_tokens` tokens appended after `past_len` cached ones.
double attention_score_flops(const ModelConfig& config, int64_t new_tokens, int64_t past_len);
double router_flops(const ModelConfig& config, int64_t tokens);
// The SwiGLU experts for `pairs` (token, expert) pairs: gate, up and down.
double expert_flops(const ModelConfig& config, int64_t pairs);
double dense_mlp_flops(const ModelConfig& config, int64_t tokens);
// Final projection to the vocabulary for `rows` rows (whole model, once).
double lm_head_flops(const ModelConfig& config, int64_t rows);

// Whole-model FLOPs of one token at position `context` (it attends to `context` keys) at top-k.
struct TokenFlops {
  double matmul = 0;     // 2 x matmul_params_per_token
  double attention = 0;  // QK^T + PV over the context, all layers
  double total() const { return matmul + attention; }
};
TokenFlops flops_per_token(const ModelConfig& config, int64_t top_k, int64_t context);

}  // namespace moe::runtime
