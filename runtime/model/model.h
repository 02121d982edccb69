// The Qwen3-MoE model on one rank, composed of parts with one job each: the weights this rank
// holds (model_weights.h), its KV cache (kv_cache.h), the MoE block (moe_layer.h: router ->
// exchange -> experts -> combine), the device-graph cache of decode steps (step_graphs.h) and the
// instrumentation (instrumentation.h: phase times, FLOPs, routing hooks). step() runs one forward
// over this rank's batch and is collective: every rank calls it the same number of times (a rank
// with no sequences passes an empty batch), issuing the same collectives in the same order.
// With overlap (ExchangeSettings) a step on several ranks runs as two micro-batches (the first
// half of this rank's sequences, then the rest, possibly none), so that one micro-batch's rows
// are in flight while the other computes; each row's arithmetic is the same either way.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/load_stats.h"
#include "parallel/placement.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/model/instrumentation.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/moe_layer.h"
#include "runtime/model/routing.h"
#include "runtime/model/step_graphs.h"

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

// How the MoE layers exchange rows: the wire type and capacity (parallel::DispatcherOptions), and
// whether a step on several ranks runs as two micro-batches whose exchanges overlap the other's
// compute (one rank: nothing to overlap, one batch).
struct ExchangeSettings {
  parallel::DispatcherOptions dispatcher;
  bool overlap = false;
};

// One sequence's part of a step: `tokens` are new tokens, appended after `past_len` cached ones.
struct SeqStep {
  int64_t sequence = 0;  // global index of the sequence in the job (for routing hooks)
  int64_t cache_slot = 0;
  int64_t past_len = 0;
  std::vector<int32_t> tokens;
};

struct StepResult {
  std::vector<float> logits;               // [num_logit_rows, V], host
  std::vector<parallel::LayerLoad> loads;  // [L] this rank's load per layer; empty for dense layers
};

class Model {
 public:
  using Progress = ModelWeights::Progress;

  // Builds the replica and this rank's expert slots from `weights` (only tensors this rank
  // holds are requested). `max_seqs` x `max_len` sizes the KV cache. The Model keeps its own
  // copy of `placement` (apply_placement replaces it).
  Model(const ModelConfig& config, const parallel::Placement& placement,
        parallel::Communicator& comm, kernels::Backend& backend, WeightSource& weights,
        int64_t max_seqs, int64_t max_len, const Progress& progress = {});

  // One forward over this rank's sequences (collective). `logit_rows` are row indices into the
  // concatenated new tokens for which logits are returned (e.g. every row, or each last row).
  StepResult step(const std::vector<SeqStep>& seqs, const std::vector<int64_t>& logit_rows);

  // Moves expert weights to `next` (ModelWeights::apply_placement) and routes by it from the
  // next step on. Collective; every rank passes the same `next`. Logits are unchanged up to the
  // fp32 summation order of the combine.
  PlacementChange apply_placement(const parallel::Placement& next);
  const parallel::Placement& placement() const { return placement_; }
  // Called at the end of every step() on every rank, with the step's index (0 = the first) and
  // result; it may run collectives (e.g. a rebalance through apply_placement).
  using StepObserver = std::function<void(int64_t step, const StepResult& result)>;
  void set_step_observer(StepObserver observer) { step_observer_ = std::move(observer); }
  // Device graphs for small single-rank batches (decode; step_graphs.h). Default: on where the
  // backend has graphs (cuda); with graphs on and a backend without them (cpu), the same
  // graph-safe step runs eagerly. No phase times are taken inside a graph step.
  void set_graphs(bool on);
  bool graphs_on() const { return graphs_on_; }

  // Rebuilds the MoE layers' exchange (not collective: every rank passes the same settings before
  // its next step). Throws moe::Error("config") on a wire type the compute dtype does not allow.
  void set_exchange(const ExchangeSettings& settings);
  const ExchangeSettings& exchange() const { return exchange_; }
  const parallel::WirePlan& wire() const { return moe_->wire(); }
  parallel::ExchangeKind exchange_kind() const { return moe_->exchange_kind(); }

  const ModelShapes& shapes() const { return shapes_; }
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const KvCache& kv_cache() const { return cache_; }
  const StepGraphs& step_graphs() const { return graphs_; }
  Instrumentation& instrumentation() { return instr_; }
  kernels::Backend& backend() { return backend_; }

 private:
  struct Batch;  // a step's metadata (model.cpp)
  struct Part;   // a micro-batch of it
  Batch prepare(const std::vector<SeqStep>& seqs, const std::vector<int64_t>& logit_rows,
                bool graph_step, bool overlap);
  // Everything the device computes in a step, up to the logits.
  void forward(const Batch& b);
  // The layers with two micro-batches, each one's exchanges in flight while the other computes.
  void forward_overlapped(const Batch& b);
  void attention_block(int64_t layer, const Batch& b, const Part& p);
  void mlp_block(int64_t layer, const Batch& b, const Part& p);
  // Every buffer a graph step touches and the backend's scratch generation.
  std::vector<const void*> graph_fingerprint();

  ModelConfig config_;
  ModelShapes shapes_;
  parallel::Placement placement_;  // owned: apply_placement replaces it
  parallel::Communicator& comm_;
  kernels::Backend& backend_;
  Instrumentation instr_;
  KvCache cache_;
  ModelWeights weights_;
  ExchangeSettings exchange_;
  std::unique_ptr<MoeLayer> moe_;
  std::unique_ptr<MoeLayer> moe_second_;  // the second micro-batch's (overlap only)
  StepGraphs graphs_;
  bool graphs_on_ = false;
  int64_t num_steps_ = 0;
  StepObserver step_observer_;

  // Step scratch in backend memory, grown on demand: [T, *] unless named.
  kernels::Buffer<float> x_, h_, q_, k_, v_, attn_, tmp_;
  kernels::Buffer<bf16> h_bf16_;         // [T, H] bf16(h_) when the backend takes bf16 activations
  kernels::Buffer<float> sel_, logits_;  // [logit rows, H], [logit rows, V]
  // The step's metadata, uploaded once per step.
  kernels::Buffer<int32_t> ids_, positions_, logit_rows_;
  kernels::Buffer<kernels::AttentionSeq> seqs_;
  kernels::Buffer<kernels::AttentionSeq> part_seqs_[2];  // each micro-batch's, rows from its own
};

}  // namespace moe::runtime
