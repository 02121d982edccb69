// The MoE block of every sparse layer on this rank: router -> top-k -> routing hooks ->
// dispatch (parallel::Dispatcher) -> grouped SwiGLU over this rank's expert slots -> combine,
// added to the residual stream. Collective: every rank runs every MoE layer in step, with its
// own tokens (possibly none). The routing never leaves backend memory unless a hook asks for it.
// run() = start() (router, hooks, messages out) + compute() (messages in, experts, rows back out)
// + finish() (rows in, added to x): between the stages the exchanges are in flight, so a second
// micro-batch can compute meanwhile (Model's --overlap).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "parallel/load_stats.h"
#include "parallel/placement.h"
#include "runtime/io/config.h"
#include "runtime/model/instrumentation.h"
#include "runtime/model/model_weights.h"
#include "runtime/model/routing.h"

namespace moe::runtime {

class MoeLayer {
 public:
  MoeLayer(const ModelConfig& config, parallel::Communicator& comm, kernels::Backend& backend,
           Instrumentation& instrumentation, const parallel::DispatcherOptions& options = {});

  // The routing tables of every MoE layer (once per placement).
  void set_placement(const parallel::Placement& placement) { dispatcher_.set_placement(placement); }
  void begin_step(int64_t step);
  // x [T, H] += the MoE block of `layer` on h [T, H] = post_attention_layernorm(x); h_bf16 is
  // bf16(h) where the backend takes bf16 activations (else nullptr).
  void run(int layer, const LayerWeights& w, const float* h, const bf16* h_bf16,
           std::span<const TokenId> tokens, float* x);
  void start(int layer, const LayerWeights& w, const float* h, const bf16* h_bf16,
             std::span<const TokenId> tokens);
  void compute(const LayerWeights& w);
  void finish(float* x);
  // A layer is between start() and finish().
  bool in_flight() const { return stage_ != Stage::kIdle; }
  const parallel::WirePlan& wire() const { return dispatcher_.wire(); }
  parallel::ExchangeKind exchange_kind() const { return dispatcher_.exchange(); }

  // This rank's load of every MoE layer of the step (others empty); one download of counters.
  std::vector<parallel::LayerLoad> collect_loads() { return dispatcher_.collect_loads(); }
  // The step ran as a replayed device graph: the counters were written by the device alone.
  void note_replayed() { dispatcher_.note_replayed(); }
  // Every buffer a MoE layer reads or writes (device graphs are valid while they stay put).
  std::vector<const void*> buffers() const;

 private:
  // Hooks see (and may rewrite) the routing on the host.
  void run_hooks(int layer, std::span<const TokenId> tokens);

  enum class Stage { kIdle, kStarted, kComputed };

  ModelConfig config_;
  kernels::Backend& backend_;
  Instrumentation& instr_;
  parallel::Dispatcher dispatcher_;
  int64_t step_ = 0;
  Stage stage_ = Stage::kIdle;
  parallel::DispatchHandle handle_;            // of the layer in flight
  kernels::Buffer<float> router_logits_;       // [T, E]
  kernels::Buffer<int32_t> topk_ids_;          // [T, k]
  kernels::Buffer<float> topk_weights_;        // [T, k]
  kernels::Buffer<unsigned char> expert_out_;  // [P, H] in the compute dtype (fp32 or bf16)
  std::vector<int32_t> host_ids_;              // hooks' copies
  std::vector<float> host_weights_;
};

}  // namespace moe::runtime
