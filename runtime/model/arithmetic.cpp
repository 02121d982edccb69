// Model arithmetic (see arithmetic.h): pure functions of ModelConfig and a placement.
#include "runtime/model/arithmetic.h"

#include <algorithm>

#include "kernels/common/check.h"

namespace moe::runtime {

ParamBreakdown count_params(const ModelConfig& c) {
  ParamBreakdown p;
  const int64_t h = c.hidden_size;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    (c.layer_is_moe(l) ? p.num_moe_layers : p.num_dense_layers) += 1;
  }
  const int64_t layers = c.num_hidden_layers;
  p.embedding = c.vocab_size * h;
  p.lm_head = c.tie_word_embeddings ? 0 : c.vocab_size * h;
  p.final_norm = h;
  p.attention = attention_params_per_layer(c) * layers;
  p.layer_norms = 2 * h * layers;
  p.per_expert = 3 * h * c.moe_intermediate_size;
  p.router = c.num_experts * h * p.num_moe_layers;
  p.experts = c.num_experts * p.per_expert * p.num_moe_layers;
  p.dense_mlp = 3 * h * c.intermediate_size * p.num_dense_layers;
  p.total = p.embedding + p.lm_head + p.final_norm + p.attention + p.layer_norms + p.router +
            p.experts + p.dense_mlp;
  return p;
}

int64_t weight_matrix_bytes(int64_t rows, int64_t cols, kernels::WeightDtype dtype) {
  if (dtype == kernels::WeightDtype::kBF16) return rows * cols * kWeightBytes;
  return rows * cols + kernels::fp8_num_scales(rows, cols) * static_cast<int64_t>(sizeof(float));
}

WeightBytes weight_bytes(const ModelConfig& c) {
  const WeightQuantization& q = c.quantization;
  const auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    return weight_matrix_bytes(
        rows, cols, q.quantizes(name) ? kernels::WeightDtype::kE4M3 : kernels::WeightDtype::kBF16);
  };
  const int64_t h = c.hidden_size;
  WeightBytes b;
  b.embedding = c.vocab_size * h * kWeightBytes;
  b.lm_head = c.tie_word_embeddings ? 0 : c.vocab_size * h * kWeightBytes;
  b.final_norm = h * kWeightBytes;
  b.per_expert.assign(static_cast<size_t>(c.num_hidden_layers), 0);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    b.attention += matrix(p + "self_attn.q_proj.weight", c.q_width(), h) +
                   matrix(p + "self_attn.k_proj.weight", c.kv_width(), h) +
                   matrix(p + "self_attn.v_proj.weight", c.kv_width(), h) +
                   matrix(p + "self_attn.o_proj.weight", h, c.q_width()) +
                   2 * c.head_dim * kWeightBytes;
    b.layer_norms += 2 * h * kWeightBytes;
    if (!c.layer_is_moe(l)) {
      const int64_t d = c.intermediate_size;
      b.dense_mlp += matrix(p + "mlp.gate_proj.weight", d, h) +
                     matrix(p + "mlp.up_proj.weight", d, h) +
                     matrix(p + "mlp.down_proj.weight", h, d);
      continue;
    }
    const int64_t i = c.moe_intermediate_size;
    const std::string e = p + "mlp.experts.0.";
    b.per_expert[static_cast<size_t>(l)] = matrix(e + "gate_proj.weight", i, h) +
                                           matrix(e + "up_proj.weight", i, h) +
                                           matrix(e + "down_proj.weight", h, i);
    b.experts += c.num_experts * b.per_expert[static_cast<size_t>(l)];
    b.router += matrix(p + "mlp.gate.weight", c.num_experts, h);
  }
  return b;
}

int64_t active_weight_bytes(const ModelConfig& c, const WeightBytes& bytes, int64_t top_k) {
  int64_t active = bytes.dense_replica();
  for (int64_t per_expert : bytes.per_expert) {
    active += std::min(top_k, c.num_experts) * per_expert;
  }
  return active;
}

int64_t attention_params_per_layer(const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  return h * c.q_width() + 2 * h * c.kv_width() + c.q_width() * h + 2 * c.head_dim;
}

int64_t count_active_params(const ModelConfig& c, int64_t top_k) {
  MOE_CHECK_AS("config", top_k >= 0 && (c.num_experts == 0 || top_k <= c.num_experts),
               "top-k {} out of range [0, num_experts {}]", top_k, c.num_experts);
  const ParamBreakdown p = count_params(c);
  // With no experts top_k selects nothing; every parameter is active.
  return p.total - p.experts + p.num_moe_layers * std::min(top_k, c.num_experts) * p.per_expert;
}

int64_t matmul_params_per_token(const ModelConfig& c, int64_t top_k) {
  const ParamBreakdown p = count_params(c);
  const int64_t h = c.hidden_size;
  const int64_t projections = (2 * c.q_width() * h + 2 * c.kv_width() * h) * c.num_hidden_layers;
  return projections + p.router + p.num_moe_layers * top_k * p.per_expert + p.dense_mlp +
         c.vocab_size * h;
}

RankWeights rank_weights(const ModelConfig& c, const parallel::Placement& placement, int rank) {
  MOE_CHECK(placement.num_layers() == c.num_hidden_layers, "placement has {} layers, model has {}",
            placement.num_layers(), c.num_hidden_layers);
  const ParamBreakdown p = count_params(c);
  const WeightBytes bytes = weight_bytes(c);
  RankWeights w;
  w.dense_params = p.dense_replica();
  w.dense_weight_bytes = bytes.dense_replica();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.layer_is_moe(l)) continue;
    const int64_t slots = placement.layer(static_cast<int>(l)).num_local_slots(rank);
    w.expert_slots += slots;
    w.expert_weight_bytes += slots * bytes.per_expert[static_cast<size_t>(l)];
  }
  w.expert_params = w.expert_slots * p.per_expert;
  return w;
}

std::vector<int64_t> expert_slots_per_rank(const ModelConfig& c,
                                           const parallel::Placement& placement) {
  std::vector<int64_t> slots(static_cast<size_t>(placement.num_ranks()));
  for (int r = 0; r < placement.num_ranks(); ++r) {
    slots[static_cast<size_t>(r)] = rank_weights(c, placement, r).expert_slots;
  }
  return slots;
}

double projection_flops(const ModelConfig& c, int64_t tokens) {
  return 2.0 * static_cast<double>(tokens) * static_cast<double>(c.hidden_size) *
         (2.0 * static_cast<double>(c.q_width()) + 2.0 * static_cast<double>(c.kv_width()));
}

double attention_score_flops(const ModelConfig& c, int64_t new_tokens, int64_t past_len) {
  // Query i (0-based among the new ones) sees past_len + i + 1 keys; QK^T and PV are each
  // 2 x heads x head_dim per (query, key) pair.
  const double n = static_cast<double>(new_tokens);
  const double pairs = n * static_cast<double>(past_len) + n * (n + 1.0) / 2.0;
  return 4.0 * static_cast<double>(c.num_attention_heads) * static_cast<double>(c.head_dim) * pairs;
}

double router_flops(const ModelConfig& c, int64_t tokens) {
  return 2.0 * static_cast<double>(tokens) * static_cast<double>(c.hidden_size) *
         static_cast<double>(c.num_experts);
}

double expert_flops(const ModelConfig& c, int64_t pairs) {
  return 2.0 * 3.0 * static_cast<double>(pairs) * static_cast<double>(c.hidden_size) *
         static_cast<double>(c.moe_intermediate_size);
}

double dense_mlp_flops(const ModelConfig& c, int64_t tokens) {
  return 2.0 * 3.0 * static_cast<double>(tokens) * static_cast<double>(c.hidden_size) *
         static_cast<double>(c.intermediate_size);
}

double lm_head_flops(const ModelConfig& c, int64_t rows) {
  return 2.0 * static_cast<double>(rows) * static_cast<double>(c.hidden_size) *
         static_cast<double>(c.vocab_size);
}

TokenFlops flops_per_token(const ModelConfig& c, int64_t top_k, int64_t context) {
  TokenFlops f;
  f.matmul = 2.0 * static_cast<double>(matmul_params_per_token(c, top_k));
  // A token at position `context` attends to `context` keys: past_len context - 1, itself.
  f.attention = static_cast<double>(c.num_hidden_layers) *
                attention_score_flops(c, 1, std::max<int64_t>(context - 1, 0));
  return f;
}

}  // namespace moe::runtime
