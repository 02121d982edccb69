// Model configuration: plain data filled from a model YAML (configs/models/*.yaml, keys named
// as in HF config.json) or from an HF checkpoint's config.json. validate() checks every
// invariant the forward relies on; loaders report errors naming the file, key and line.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe::runtime {

// A checkpoint's block-quantized FP8 weights as its config.json `quantization_config` announces
// them (transformers' fine-grained FP8: quant_method fp8, fmt e4m3, weight_block_size [128, 128],
// activation_scheme dynamic); docs/fp8.md.
struct WeightQuantization {
  bool fp8 = false;
  std::vector<std::string> modules_to_not_convert;

  // Whether tensor `name` (an HF name) is e4m3 with 128 x 128 block scales under this config: the
  // weight of a linear layer of a decoder layer (q/k/v/o projections, router, experts, dense MLP,
  // fused expert tensors) whose module modules_to_not_convert does not name. An entry names a
  // module when its dot-separated parts appear as a run of the module's parts ('*' matches one
  // part): "mlp.gate" names "model.layers.3.mlp.gate" but not "model.layers.3.mlp.gate_proj".
  // Embeddings, norms and lm_head are never e4m3.
  bool quantizes(const std::string& name) const;
  // The published Qwen3-MoE FP8 recipe, for `plan --weights-dtype fp8` and `--quantize fp8`:
  // attention projections, experts and dense MLPs in e4m3; routers (and what is never e4m3) not.
  static WeightQuantization published_fp8();
};

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
  WeightQuantization quantization;       // `quantization_config` (absent: every weight bf16)
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
