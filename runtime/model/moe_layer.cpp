// MoeLayer (moe_layer.h). Phases: router (incl. hooks), then the dispatcher's layout, dispatch
// and combine marks, with the expert compute between dispatch and combine.
#include "runtime/model/moe_layer.h"

#include <algorithm>

#include "kernels/common/check.h"

namespace moe::runtime {

MoeLayer::MoeLayer(const ModelConfig& config, parallel::Communicator& comm,
                   kernels::Backend& backend, Instrumentation& instrumentation,
                   const parallel::DispatcherOptions& options)
    : config_(config),
      backend_(backend),
      instr_(instrumentation),
      dispatcher_(comm, backend, config.hidden_size, static_cast<int>(config.num_experts_per_tok),
                  options) {}

void MoeLayer::begin_step(int64_t step) {
  step_ = step;
  dispatcher_.begin_step();
  dispatcher_.set_timer(instr_.step_timer(), static_cast<int>(Phase::kLayout),
                        static_cast<int>(Phase::kDispatch), static_cast<int>(Phase::kCombine));
}

void MoeLayer::run(int layer, const LayerWeights& w, const float* h, const bf16* h_bf16,
                   std::span<const TokenId> tokens, float* x) {
  start(layer, w, h, h_bf16, tokens);
  compute(w);
  finish(x);
}

void MoeLayer::start(int layer, const LayerWeights& w, const float* h, const bf16* h_bf16,
                     std::span<const TokenId> tokens) {
  MOE_CHECK(stage_ == Stage::kIdle, "MoE layer {} started while another is in flight", layer);
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t H = config_.hidden_size, E = config_.num_experts, k = config_.num_experts_per_tok;
  const size_t rows = static_cast<size_t>(std::max<int64_t>(T, 1));
  router_logits_.ensure(backend_, rows * E);
  topk_ids_.ensure(backend_, rows * k);
  topk_weights_.ensure(backend_, rows * k);
  if (T > 0) {
    backend_.linear(h, w.router.view(), T, H, E, router_logits_.data(), h_bf16);
    backend_.router_topk(router_logits_.data(), T, E, k, config_.norm_topk_prob, topk_ids_.data(),
                         topk_weights_.data());
  }
  if (instr_.has_routing_hooks()) run_hooks(layer, tokens);
  instr_.mark(Phase::kRouter);
  dispatcher_.start_dispatch(layer, h, T, topk_ids_.data(), topk_weights_.data(), h_bf16);
  stage_ = Stage::kStarted;
}

void MoeLayer::compute(const LayerWeights& w) {
  MOE_CHECK(stage_ == Stage::kStarted, "MoE layer computed before it started");
  const int64_t H = config_.hidden_size;
  handle_ = dispatcher_.finish_dispatch();
  parallel::DispatchHandle& d = handle_;
  d.experts.slot_weights = w.slot_weights_dev.data();
  d.experts.host_slot_weights = w.slot_weights.data();
  // The experts' output in the compute dtype: bf16 experts round their output to bf16
  // (kernels/common/rounding.h), so bf16 rows carry the same values in half the bytes.
  const bool bf16_out = backend_.compute_dtype() == kernels::ComputeDtype::kBF16;
  const size_t elems = static_cast<size_t>(std::max<int64_t>(d.experts.max_pairs, 1) * H);
  expert_out_.ensure(backend_, elems * (bf16_out ? sizeof(bf16) : sizeof(float)));
  auto* out_f32 = reinterpret_cast<float*>(expert_out_.data());
  auto* out_bf16 = reinterpret_cast<bf16*>(expert_out_.data());
  if (d.experts.max_pairs > 0) {
    backend_.expert_swiglu(d.recv_rows, H, config_.moe_intermediate_size, d.experts,
                           bf16_out ? nullptr : out_f32, d.recv_rows_bf16,
                           bf16_out ? out_bf16 : nullptr);
  }
  // The FLOPs of the pairs computed are counted from the loads (collect_loads).
  instr_.mark(Phase::kExpert);
  if (bf16_out) {
    dispatcher_.start_combine(out_bf16, d);
  } else {
    dispatcher_.start_combine(out_f32, d);
  }
  stage_ = Stage::kComputed;
}

void MoeLayer::finish(float* x) {
  MOE_CHECK(stage_ == Stage::kComputed, "MoE layer finished before its experts ran");
  dispatcher_.finish_combine(handle_, x);
  stage_ = Stage::kIdle;
}

void MoeLayer::run_hooks(int layer, std::span<const TokenId> tokens) {
  const size_t n = tokens.size() * static_cast<size_t>(config_.num_experts_per_tok);
  host_ids_.resize(n);
  host_weights_.resize(n);
  if (n > 0) {
    backend_.download(host_ids_.data(), topk_ids_.data(), n * sizeof(int32_t));
    backend_.download(host_weights_.data(), topk_weights_.data(), n * sizeof(float));
  }
  instr_.route(step_, layer, tokens, host_ids_, host_weights_);
  if (n > 0) {
    backend_.upload(topk_ids_.data(), host_ids_.data(), n * sizeof(int32_t));
    backend_.upload(topk_weights_.data(), host_weights_.data(), n * sizeof(float));
  }
}

std::vector<const void*> MoeLayer::buffers() const {
  std::vector<const void*> b = {router_logits_.data(), topk_ids_.data(), topk_weights_.data(),
                                expert_out_.data()};
  const std::vector<const void*> d = dispatcher_.buffers();
  b.insert(b.end(), d.begin(), d.end());
  return b;
}

}  // namespace moe::runtime
