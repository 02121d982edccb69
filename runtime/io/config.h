// Model configuration: plain data filled from a model YAML (configs/models/*.yaml, keys named
// as in HF config.json) or from an HF checkpoint's config.json. validate() checks every
// invariant the forward relies on; loaders report errors naming the file, key and line.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe::runtime {

struct ModelConfig {
  std::string name = "model";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;            // H
  int64_t num_hidden_layers = 0;      // L
  int64_t num_attention_heads = 0;    // nh
  int64_t num_key_value_heads = 0;    // nkv
  int64_t head_dim = 0;               // hd (HF default: hidden_size / num_attention_heads)
  int64_t intermediate_size = 0;      // dense MLP width (dense layers only)
  int64_t moe_intermediate_size = 0;  // I, per expert
  int64_t num_experts = 0;            // E
  int64_t num_experts_per_tok = 0;    // k
  // Defaults of the optional keys are HF Qwen3MoeConfig's; both loaders take them from here.
  bool norm_topk_prob = false;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 32768;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  uint64_t seed = 0;                     // synthetic weights (model YAML key `seed`)
  std::string source;                    // file it was read from, for messages
  std::map<std::string, int> key_lines;  // 1-based line of each key in `source` (0/absent: unknown)

  // Throws moe::Error("config", ...) naming `source` and the offending key.
  void validate() const;
  // Qwen3-MoE rule: sparse when not in mlp_only_layers, E > 0 and (l+1) % decoder_sparse_step == 0.
  bool layer_is_moe(int64_t layer) const;
  std::vector<bool> moe_layers() const;
  int64_t q_width() const { return num_attention_heads * head_dim; }
  int64_t kv_width() const { return num_key_value_heads * head_dim; }
};

// The resolved configuration, every key with its value (a session's rank 0 prints it once).
std::string format_config(const ModelConfig& config);

// Model YAML (keys as in config.json, plus optional `name` and `seed`).
ModelConfig load_model_yaml(const std::string& path);
// HF config.json (accepts rope_parameters.rope_theta as well as rope_theta).
ModelConfig load_hf_config(const std::string& path);
// `path` is a model YAML, a config.json, or a checkpoint directory containing config.json.
ModelConfig load_model_config(const std::string& path);

}  // namespace moe::runtime
