// `moe-ep plan`: what a MoE model costs, computed from its config alone (no MPI, no weights).
// Parameter counts and FLOPs come from runtime/model/arithmetic.h;
// memory beyond weights (KV cache, activation and communication buffers) is a stated estimate
// for the largest rank, so "fits" errs on the side of "does not fit".
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/model/arithmetic.h"

namespace moe::runtime {

// GPU memory per rank when none is given (`plan --gpu-mem-gib`): an 80 GB H100 / A100.
inline constexpr double kDefaultGpuMemGib = 80;

struct PlanOptions {
  int64_t batch = 1;       // sequences in the whole job; attention is data-parallel, so they are
                           // spread over ranks (rank r holds ceil(batch / N) at most)
  int64_t context = 4096;  // tokens per sequence (KV cache length, prefill length)
  double gpu_mem_gib = kDefaultGpuMemGib;
  std::vector<int> ranks = {1, 2, 4, 8};
  // Bytes per KV-cache element: 2 for the CUDA backend (bf16 cache), 4 for the CPU backend
  // (fp32). Activations and the rows exchanged between ranks are fp32 on every backend (the
  // runtime keeps its hidden stream in fp32; only weights and the CUDA KV cache are bf16).
  int kv_bytes = 2;
  // Optional placement override: expert slots (summed over all MoE layers, replicas included)
  // held by each rank. When non-empty its size is the one rank count reported (replacing
  // `ranks`) and the largest entry sizes the expert shard.
  std::vector<int64_t> expert_slots_per_rank;
  std::string placement_name;  // shown next to the override ("contiguous" otherwise)
  // Nodes of this many ranks exchanging node-first (--exchange hierarchical): the proxy's second
  // exchange and its node rows are counted too. 0: the flat exchange.
  int ranks_per_node = 0;
};

// Parameters that touch one token at a given top-k.
struct ActiveRow {
  int64_t top_k = 0;
  int64_t active_params = 0;
  double share = 0;            // active_params / total
  int64_t active_bytes = 0;    // their weights as stored (config.quantization)
  int64_t matmul_params = 0;   // active weights used in a matmul (no embedding lookup, norms)
  double flops_per_token = 0;  // 2 x matmul_params + attention FLOPs at options.context
  bool configured = false;     // the model's own num_experts_per_tok
};

// Memory of the most loaded rank for one rank count N.
struct RankMemory {
  int num_ranks = 1;
  int64_t expert_slots = 0;            // experts held, summed over MoE layers
  int64_t expert_slots_per_layer = 0;  // ceil(E / N) for contiguous placement
  int64_t sequences = 0;               // ceil(batch / N)
  int64_t tokens = 0;                  // sequences x context (one prefill step)
  int64_t dense_replica_bytes = 0;     // everything but experts, as stored
  int64_t expert_shard_bytes = 0;      // expert_slots x one expert's 3 H I weights, as stored
  int64_t kv_cache_bytes = 0;
  int64_t activation_buffer_bytes = 0;
  int64_t communication_bytes = 0;
  int64_t total_bytes = 0;
  bool fits = false;
};

struct PlanReport {
  std::string model_name;
  std::string source;
  ModelConfig config;
  PlanOptions options;
  ParamBreakdown params;
  int64_t total_params = 0;
  WeightBytes weight_bytes;  // by role, as config.quantization stores them
  int64_t total_bytes = 0;   // weights as stored
  int64_t configured_top_k = 0;
  int64_t active_params = 0;  // at configured_top_k
  double active_share = 0;
  int64_t active_bytes = 0;              // weight bytes touched per token, as stored
  int64_t matmul_params_per_token = 0;   // at configured_top_k
  double matmul_flops_per_token = 0;     // 2 x matmul_params_per_token
  double attention_flops_per_token = 0;  // 4 x layers x heads x head_dim x context
  double flops_per_token = 0;
  std::vector<ActiveRow> active;  // top-k 1, 2, 4, 8, 16 (<= E) and the configured k
  std::vector<RankMemory> ranks;
};

// Throws moe::Error("config") on bad options (batch/context < 1, no ranks, ...).
PlanReport make_plan(const ModelConfig& config, const PlanOptions& options);
// Human tables, counts with thousands separators (30,532,122,624).
std::string format_plan(const PlanReport& report);
nlohmann::json plan_to_json(const PlanReport& report);

// 30532122624 -> "30,532,122,624".
std::string with_thousands(int64_t value);

}  // namespace moe::runtime
