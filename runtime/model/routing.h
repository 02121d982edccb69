// Where a MoE layer's top-k comes from, and who sees it. By default the model's own router
// decides; a RoutingHook placed on the Model sees every MoE layer's top-k of this rank's tokens
// right after the router and may record it (traces) or overwrite it (replayed or synthetic
// routing, routing forced equal between backends). Tokens are named by their global identity,
// so a hook gives the same answer for a token whatever the rank count.
#pragma once

#include <cstdint>
#include <span>

namespace moe::runtime {

// A token's identity in the whole job: its sequence (global index) and position in it.
struct TokenId {
  int64_t sequence = 0;
  int64_t position = 0;
};

class RoutingHook {
 public:
  virtual ~RoutingHook() = default;
  // MoE layer `layer` of step `step` (0 = the first step() of the model) routed this rank's
  // tokens: ids and weights are [tokens.size(), top_k], row-major, host memory, as the router
  // left them. A hook may overwrite them; ids must stay in [0, num_experts) and distinct per row.
  virtual void route(int64_t step, int layer, std::span<const TokenId> tokens,
                     std::span<int32_t> ids, std::span<float> weights) = 0;
};

}  // namespace moe::runtime
