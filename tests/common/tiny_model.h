// A ModelConfig small enough to count parameters, bytes and costs by hand: the shape is given,
// every other key keeps ModelConfig's (HF Qwen3MoeConfig's) default.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/io/config.h"

namespace moe::test {

struct TinyShape {
  int64_t vocab = 0;
  int64_t hidden = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate = 0;      // dense MLP width
  int64_t moe_intermediate = 0;  // per expert
  int64_t experts = 0;
  int64_t top_k = 0;
  std::vector<int64_t> dense_layers = {};  // mlp_only_layers
};

// The validated config of `shape`, named `name`.
inline runtime::ModelConfig tiny_model(std::string name, const TinyShape& shape) {
  runtime::ModelConfig c;
  c.name = std::move(name);
  c.vocab_size = shape.vocab;
  c.hidden_size = shape.hidden;
  c.num_hidden_layers = shape.layers;
  c.num_attention_heads = shape.heads;
  c.num_key_value_heads = shape.kv_heads;
  c.head_dim = shape.head_dim;
  c.intermediate_size = shape.intermediate;
  c.moe_intermediate_size = shape.moe_intermediate;
  c.num_experts = shape.experts;
  c.num_experts_per_tok = shape.top_k;
  c.mlp_only_layers = shape.dense_layers;
  c.validate();
  return c;
}

}  // namespace moe::test
