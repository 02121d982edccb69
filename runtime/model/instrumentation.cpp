// Instrumentation (instrumentation.h): FLOPs from runtime/model/arithmetic.h, the one home of
// those formulas.
#include "runtime/model/instrumentation.h"

#include "runtime/model/arithmetic.h"

namespace moe::runtime {

double PhaseTimes::total() const {
  double t = 0;
  for (double v : seconds) t += v;
  return t;
}

Instrumentation::Instrumentation(kernels::Backend& backend, const ModelConfig& config)
    : config_(config),
      layer_is_moe_(config.moe_layers()),
      timer_(backend.make_phase_timer(kNumPhases)) {}

void Instrumentation::start_step(bool timed) {
  timed_ = timed;
  if (timed_) timer_->start();
}

const PhaseTimes& Instrumentation::times() {
  timer_->collect(times_.seconds);
  return times_;
}

void Instrumentation::count_dense(int64_t T, std::span<const kernels::AttentionSeq> seqs,
                                  int64_t logit_rows) {
  double f = 0;
  for (const bool moe : layer_is_moe_) {
    if (T > 0) {
      f += projection_flops(config_, T);
      for (const auto& a : seqs) f += attention_score_flops(config_, a.num_new, a.past_len);
    }
    f += moe ? router_flops(config_, T) : dense_mlp_flops(config_, T);
  }
  if (logit_rows > 0) f += lm_head_flops(config_, logit_rows);
  last_step_flops_ = f;
}

void Instrumentation::count_experts(int64_t pairs) {
  last_step_flops_ += expert_flops(config_, pairs);
}

void Instrumentation::route(int64_t step, int layer, std::span<const TokenId> tokens,
                            std::span<int32_t> ids, std::span<float> weights) {
  for (RoutingHook* hook : hooks_) hook->route(step, layer, tokens, ids, weights);
}

}  // namespace moe::runtime
