// The Qwen3-MoE model on one rank: the dense replica (embeddings, attention, norms, routers,
// lm_head, dense MLP layers) plus the experts of this rank's placement slots, a KV cache, and a
// step() that runs one forward over this rank's batch. MoE layers exchange tokens through the
// Dispatcher, so step() is collective: every rank calls it the same number of times (a rank with
// no sequences passes an empty batch).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "parallel/placement.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"

namespace moe::runtime {

// Every size the forward needs, computed once from the config.
struct ModelShapes {
  int64_t hidden = 0;      // H
  int64_t vocab = 0;       // V
  int64_t num_layers = 0;  // L
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t q_width = 0;     // num_heads * head_dim
  int64_t kv_width = 0;    // num_kv_heads * head_dim
  int64_t expert_inter = 0;  // I (per expert)
  int64_t dense_inter = 0;   // dense MLP width
  int64_t num_experts = 0, top_k = 0;
  explicit ModelShapes(const ModelConfig& c);
  ModelShapes() = default;
};

// One sequence's part of a step: `tokens` are new tokens, appended after `past_len` cached ones.
struct SeqStep {
  int64_t cache_slot = 0;
  int64_t past_len = 0;
  std::vector<int32_t> tokens;
};

// Wall time per phase of the forward on this rank, seconds (accumulated over steps).
struct PhaseTimes {
  double embed = 0, attention = 0, router = 0, layout = 0, dispatch = 0, expert = 0, combine = 0,
         dense_mlp = 0, lm_head = 0;
  double total() const {
    return embed + attention + router + layout + dispatch + expert + combine + dense_mlp + lm_head;
  }
  PhaseTimes& operator+=(const PhaseTimes& o);
};

// What one MoE layer of one step did on this rank (for the load metrics).
struct LayerTraffic {
  std::vector<int64_t> tokens_per_expert;  // [E] (token, expert) pairs from this rank's tokens
  std::vector<int64_t> pairs_per_rank;     // [N] pairs sent to each rank (incl. itself)
  std::vector<int64_t> rows_per_rank;      // [N] deduplicated rows sent to each rank
  int64_t recv_rows = 0;
  parallel::ExchangeStats exchange;
};

struct StepResult {
  std::vector<float> logits;                 // [num_logit_rows, V], host
  std::vector<LayerTraffic> traffic;         // [L]; empty entries for dense layers
};

// Test hook: make `rank` fail at `layer` (MOE_EP_FAULT="rank=R,layer=L[,mode=throw|hang]").
struct FaultInjection {
  int rank = -1;
  int layer = -1;
  std::string mode = "throw";
  static FaultInjection from_env();
};

class Model {
 public:
  using Progress = std::function<void(int64_t done_bytes, int64_t total_bytes)>;

  // Builds the replica and this rank's expert slots from `weights` (only tensors this rank
  // holds are requested). `max_seqs` x `max_len` sizes the KV cache.
  Model(const ModelConfig& config, const parallel::Placement& placement,
        parallel::Communicator& comm, kernels::Backend& backend, WeightSource& weights,
        int64_t max_seqs, int64_t max_len, const Progress& progress = {});

  // One forward over this rank's sequences (collective). `logit_rows` are row indices into the
  // concatenated new tokens for which logits are returned (e.g. every row, or each last row).
  StepResult step(const std::vector<SeqStep>& seqs, const std::vector<int64_t>& logit_rows);

  const ModelShapes& shapes() const { return shapes_; }
  const ModelConfig& config() const { return config_; }
  const PhaseTimes& times() const { return times_; }
  void reset_times() { times_ = {}; }
  int64_t expert_bytes() const { return expert_bytes_; }    // this rank's expert shard
  int64_t dense_bytes() const { return dense_bytes_; }      // replica
  int64_t kv_cache_bytes() const { return kv_cache_bytes_; }
  int64_t num_local_experts() const { return num_local_experts_; }
  // FLOPs of matmuls (2 x params touched x tokens) in the last step on this rank, plus attention.
  double last_step_flops() const { return last_step_flops_; }
  kernels::Backend& backend() { return backend_; }

 private:
  struct ExpertBuf {
    int logical = -1;
    kernels::Buffer<bf16> gate, up, down;  // [I, H], [I, H], [H, I]
  };
  struct Layer {
    bool is_moe = false;
    kernels::Buffer<bf16> input_norm, post_norm;  // [H]
    kernels::Buffer<bf16> q_proj;                 // [q_width, H]
    kernels::Buffer<bf16> k_proj, v_proj;         // [kv_width, H]
    kernels::Buffer<bf16> o_proj;                 // [H, q_width]
    kernels::Buffer<bf16> q_norm, k_norm;         // [head_dim]
    kernels::Buffer<bf16> router;                 // [E, H] (MoE)
    std::vector<ExpertBuf> experts;               // this rank's local slots (MoE)
    kernels::Buffer<bf16> mlp_gate, mlp_up;       // [dense_inter, H] (dense)
    kernels::Buffer<bf16> mlp_down;               // [H, dense_inter] (dense)
    kernels::Buffer<unsigned char> k_cache, v_cache;  // [max_seqs, max_len, kv_width] kv_dtype_
  };

  kernels::Buffer<bf16> load(WeightSource& w, const std::string& name,
                             std::vector<int64_t> shape);
  void moe_block(int layer, const float* h, int64_t num_tokens, float* y, LayerTraffic& traffic);

  ModelConfig config_;
  ModelShapes shapes_;
  const parallel::Placement& placement_;
  parallel::Communicator& comm_;
  kernels::Backend& backend_;
  parallel::Dispatcher dispatcher_;
  FaultInjection fault_;
  int64_t max_seqs_, max_len_;
  kernels::KvDtype kv_dtype_;  // the backend's KV-cache element type

  kernels::Buffer<bf16> embed_;    // [V, H]
  kernels::Buffer<bf16> lm_head_;  // [V, H] (empty when tied: embed_ is used)
  kernels::Buffer<bf16> final_norm_;  // [H]
  std::vector<Layer> layers_;

  // Step scratch, grown on demand: [T, *].
  kernels::Buffer<float> x_, h_, q_, k_, v_, attn_, tmp_, router_logits_, expert_out_, sel_,
      logits_;

  PhaseTimes times_;
  int64_t expert_bytes_ = 0, dense_bytes_ = 0, kv_cache_bytes_ = 0, num_local_experts_ = 0;
  int64_t load_done_bytes_ = 0, load_total_bytes_ = 0;
  Progress progress_;
  double last_step_flops_ = 0;
};

}  // namespace moe::runtime
