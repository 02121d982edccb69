// The Qwen3-MoE model on one rank: the dense replica (embeddings, attention, norms, routers,
// lm_head, dense MLP layers) plus the experts of this rank's placement slots, a KV cache, and a
// step() that runs one forward over this rank's batch. MoE layers exchange tokens through the
// Dispatcher, so step() is collective: every rank calls it the same number of times (a rank with
// no sequences passes an empty batch).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "parallel/load_stats.h"
#include "parallel/placement.h"
#include "parallel/resident_dispatcher.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/model/arithmetic.h"
#include "runtime/model/routing.h"

namespace moe::runtime {

// Every size the forward needs, computed once from the config.
struct ModelShapes {
  int64_t hidden = 0;      // H
  int64_t vocab = 0;       // V
  int64_t num_layers = 0;  // L
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t q_width = 0;       // num_heads * head_dim
  int64_t kv_width = 0;      // num_kv_heads * head_dim
  int64_t expert_inter = 0;  // I (per expert)
  int64_t dense_inter = 0;   // dense MLP width
  int64_t num_experts = 0, top_k = 0;
  explicit ModelShapes(const ModelConfig& c);
  ModelShapes() = default;
};

// One sequence's part of a step: `tokens` are new tokens, appended after `past_len` cached ones.
struct SeqStep {
  int64_t sequence = 0;  // global index of the sequence in the job (for routing hooks)
  int64_t cache_slot = 0;
  int64_t past_len = 0;
  std::vector<int32_t> tokens;
};

// The phases of a forward, in the order a report lists them.
enum class Phase : int {
  kEmbed,
  kAttention,
  kRouter,
  kLayout,
  kDispatch,
  kExpert,
  kCombine,
  kDenseMlp,
  kLmHead,
};
inline constexpr int kNumPhases = 9;
inline constexpr std::array<const char*, kNumPhases> kPhaseNames = {
    "embed",  "attention", "router",    "layout", "dispatch",
    "expert", "combine",   "dense_mlp", "lm_head"};

// Time per phase of the forward on this rank, seconds (accumulated over steps), taken on the
// backend's timeline (kernels/phase_timer.h: host clock on the CPU, CUDA events on the GPU).
struct PhaseTimes {
  std::array<double, kNumPhases> seconds{};
  double& operator[](Phase p) { return seconds[static_cast<size_t>(p)]; }
  double operator[](Phase p) const { return seconds[static_cast<size_t>(p)]; }
  double total() const;
};

struct StepResult {
  std::vector<float> logits;               // [num_logit_rows, V], host
  std::vector<parallel::LayerLoad> loads;  // [L] this rank's load per layer; empty for dense layers
};

// What apply_placement moved on this rank.
struct PlacementChange {
  int64_t experts_received = 0;  // (layer, expert) slots filled from another rank
  int64_t bytes_received = 0;    // their bf16 weight bytes (gate, up, down)
  int64_t experts_kept = 0;      // slots whose weights this rank already held
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
  // holds are requested). `max_seqs` x `max_len` sizes the KV cache. The Model keeps its own
  // copy of `placement` (apply_placement replaces it).
  Model(const ModelConfig& config, const parallel::Placement& placement,
        parallel::Communicator& comm, kernels::Backend& backend, WeightSource& weights,
        int64_t max_seqs, int64_t max_len, const Progress& progress = {});

  // One forward over this rank's sequences (collective). `logit_rows` are row indices into the
  // concatenated new tokens for which logits are returned (e.g. every row, or each last row).
  StepResult step(const std::vector<SeqStep>& seqs, const std::vector<int64_t>& logit_rows);

  // Moves expert weights to `next` (same layers, experts and ranks; slot counts may change):
  // a slot whose expert this rank already holds keeps its buffers, every other slot receives its
  // expert's bf16 weights from a rank that held it, one all_to_all_v per MoE layer that changes.
  // Collective; every rank passes the same `next`. Logits are unchanged up to the fp32 summation
  // order of the combine.
  PlacementChange apply_placement(const parallel::Placement& next);
  const parallel::Placement& placement() const { return placement_; }
  // Called at the end of every step() on every rank, with the step's index (0 = the first) and
  // result; it may run collectives (e.g. a rebalance through apply_placement).
  using StepObserver = std::function<void(int64_t step, const StepResult& result)>;
  void set_step_observer(StepObserver observer) { step_observer_ = std::move(observer); }

  const ModelShapes& shapes() const { return shapes_; }
  const ModelConfig& config() const { return config_; }
  // Phase times so far (collects the backend timer, which may wait for the device).
  const PhaseTimes& times();
  std::string timing_method() const { return timer_->method(); }
  // Where MoE layers route: on the device (top-k, layout and grouping computed by backend ops
  // and kept in backend memory: parallel/resident_dispatcher.h) or on the host (Dispatcher).
  // Default: device for backends with device memory, host for the CPU backend (both give the
  // same logits there; the host path is the reference). Every rank must choose the same.
  void set_routing_on_device(bool on);
  bool routing_on_device() const { return routing_on_device_; }
  // Device graphs for small single-rank batches (decode): every op's metadata is uploaded once
  // per step and the whole forward up to the logits is captured once per batch shape, then
  // replayed (the same ops, so the same logits as with graphs off). Default: on where the backend
  // has graphs (cuda); with graphs on and a backend without them (cpu), the same graph-safe step
  // runs eagerly. No phase times are taken inside a graph step.
  void set_graphs(bool on);
  bool graphs() const { return graphs_enabled_; }
  int64_t graph_captures() const { return graph_captures_; }
  int64_t graph_replays() const { return graph_replays_; }
  // Seen after every MoE layer's router (nullptr: none). Not owned; must outlive the steps.
  void set_routing_hook(RoutingHook* hook) { routing_hook_ = hook; }
  int64_t expert_bytes() const { return weights_.expert_bytes(); }  // this rank's expert shard
  int64_t dense_bytes() const { return weights_.dense_bytes(); }    // replica
  int64_t kv_cache_bytes() const { return kv_cache_bytes_; }
  int64_t num_local_experts() const { return weights_.expert_slots; }
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
    // q_proj, k_proj, v_proj stacked: [q_width + 2 kv_width, H], q rows first, then k, then v
    // (one GEMM on the GPU; the CPU multiplies the three blocks separately, as before).
    kernels::Buffer<bf16> qkv_proj;
    kernels::Buffer<bf16> o_proj;                      // [H, q_width]
    kernels::Buffer<bf16> q_norm, k_norm;              // [head_dim]
    kernels::Buffer<bf16> router;                      // [E, H] (MoE)
    std::vector<ExpertBuf> experts;                    // this rank's local slots (MoE)
    std::vector<kernels::ExpertWeights> slot_weights;  // experts' pointers, slot order (MoE)
    kernels::Buffer<kernels::ExpertWeights> slot_weights_dev;  // the same in backend memory
    kernels::Buffer<bf16> mlp_gate, mlp_up;                    // [dense_inter, H] (dense)
    kernels::Buffer<bf16> mlp_down;                            // [H, dense_inter] (dense)
    kernels::Buffer<unsigned char> k_cache, v_cache;  // [max_seqs, max_len, kv_width] kv_dtype_
  };

  kernels::Buffer<bf16> load(WeightSource& w, const std::string& name, std::vector<int64_t> shape);
  // Tensors [rows_i, cols] stacked by rows into one buffer, in the order given.
  kernels::Buffer<bf16> load_stacked(WeightSource& w,
                                     const std::vector<std::pair<std::string, int64_t>>& parts,
                                     int64_t cols);
  void moe_block(int layer, const float* h, std::span<const TokenId> tokens, float* y,
                 parallel::LayerLoad& load);
  // The MoE block with routing on the device: x [T, H] += the block's output.
  void moe_block_on_device(int layer, const float* h, std::span<const TokenId> tokens, float* x);
  // Rebuilds every MoE layer's slot weight tables and the resident dispatcher's routing tables
  // (after loading and after apply_placement).
  void refresh_slot_tables();
  // Runs `forward` eagerly, or captures it, or replays its graph (see set_graphs).
  void run_as_graph(int64_t tokens, int64_t num_seqs, int64_t logit_rows,
                    const std::function<void()>& forward);
  void drop_graphs();
  // Every buffer address a captured step reads or writes, and the backend's scratch generation.
  std::vector<const void*> graph_fingerprint() const;
  void mark(Phase p) {
    if (timing_on_) timer_->mark(static_cast<int>(p));
  }

  ModelConfig config_;
  ModelShapes shapes_;
  parallel::Placement placement_;  // owned: apply_placement replaces it
  parallel::Communicator& comm_;
  kernels::Backend& backend_;
  parallel::Dispatcher dispatcher_;
  parallel::ResidentDispatcher resident_;
  bool routing_on_device_ = false;
  FaultInjection fault_;
  int64_t max_seqs_, max_len_;
  kernels::KvDtype kv_dtype_;  // the backend's KV-cache element type

  kernels::Buffer<bf16> embed_;       // [V, H]
  kernels::Buffer<bf16> lm_head_;     // [V, H] (empty when tied: embed_ is used)
  kernels::Buffer<bf16> final_norm_;  // [H]
  std::vector<Layer> layers_;

  // Step scratch, grown on demand: [T, *].
  kernels::Buffer<float> x_, h_, q_, k_, v_, attn_, tmp_, router_logits_, expert_out_, sel_,
      logits_;
  kernels::Buffer<int32_t> positions_;   // [T] the step's token positions, uploaded once per step
  kernels::Buffer<bf16> h_bf16_;         // [T, H] bf16(h_) when backend takes_bf16_activations()
  kernels::Buffer<int32_t> topk_ids_;    // [T, k] routing on the device
  kernels::Buffer<float> topk_weights_;  // [T, k]
  // Graph steps: the step's metadata in backend memory, and the captured graphs.
  kernels::Buffer<int32_t> step_ids_, step_logit_rows_;
  kernels::Buffer<kernels::AttentionSeq> step_seqs_;
  struct GraphEntry {
    std::array<int64_t, 3> key;  // tokens, sequences, logit rows
    std::vector<const void*> fingerprint;
    int64_t handle = -1;  // backend graph; -1: warmed up, not captured yet
  };
  std::vector<GraphEntry> graphs_;
  bool graphs_enabled_ = false;
  bool timing_on_ = true;
  int64_t graph_captures_ = 0, graph_replays_ = 0;
  std::vector<bool> layer_is_moe_;

  PhaseTimes times_;
  std::unique_ptr<kernels::PhaseTimer> timer_;
  RoutingHook* routing_hook_ = nullptr;
  StepObserver step_observer_;
  int64_t num_steps_ = 0;
  RankWeights weights_;
  int64_t kv_cache_bytes_ = 0;
  int64_t load_done_bytes_ = 0, load_total_bytes_ = 0;
  Progress progress_;
  double last_step_flops_ = 0;
};

}  // namespace moe::runtime
