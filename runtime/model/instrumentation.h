// What a step reports besides its logits: time per phase on the backend's own timeline
// (kernels/phase_timer.h: host clock on the CPU, CUDA events on the GPU), the FLOPs it computed,
// and the routing hooks that see every MoE layer's top-k right after its router. Nothing here
// changes what a step computes, except a hook that rewrites the routing on purpose.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "runtime/io/config.h"
#include "runtime/model/routing.h"

namespace moe::runtime {

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

// Time per phase of the forward on this rank, seconds (accumulated over steps).
struct PhaseTimes {
  std::array<double, kNumPhases> seconds{};
  double& operator[](Phase p) { return seconds[static_cast<size_t>(p)]; }
  double operator[](Phase p) const { return seconds[static_cast<size_t>(p)]; }
  double total() const;
};

class Instrumentation {
 public:
  Instrumentation(kernels::Backend& backend, const ModelConfig& config);

  // ---- Phase times. A step either times its phases or not (a step captured as a device graph
  // does not: marks would be recorded into the graph).
  void start_step(bool timed);
  void mark(Phase p) {
    if (timed_) timer_->mark(static_cast<int>(p));
  }
  // The timer a part of the step marks its own phases on, or nullptr in an untimed step.
  kernels::PhaseTimer* step_timer() { return timed_ ? timer_.get() : nullptr; }
  // Phase times so far (collects the backend timer, which may wait for the device).
  const PhaseTimes& times();
  std::string timing_method() const { return timer_->method(); }

  // ---- FLOPs of matmuls (2 x params touched x tokens) plus attention scores, this rank, last
  // step. Everything but the experts: a function of the batch alone.
  void count_dense(int64_t num_tokens, std::span<const kernels::AttentionSeq> seqs,
                   int64_t logit_rows);
  // The (row, expert) pairs this rank computed in one MoE layer.
  void count_experts(int64_t pairs);
  double last_step_flops() const { return last_step_flops_; }

  // ---- Routing hooks, run in order after every MoE layer's router on every rank (with this
  // rank's tokens, possibly none). Not owned; each must outlive the steps.
  void set_routing_hooks(std::vector<RoutingHook*> hooks) { hooks_ = std::move(hooks); }
  bool has_routing_hooks() const { return !hooks_.empty(); }
  void route(int64_t step, int layer, std::span<const TokenId> tokens, std::span<int32_t> ids,
             std::span<float> weights);

 private:
  ModelConfig config_;
  std::vector<bool> layer_is_moe_;
  std::unique_ptr<kernels::PhaseTimer> timer_;
  bool timed_ = false;
  PhaseTimes times_;
  double last_step_flops_ = 0;
  std::vector<RoutingHook*> hooks_;
};

}  // namespace moe::runtime
