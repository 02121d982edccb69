// A test seam installed from outside the step loop: MOE_EP_FAULT="rank=R,layer=L[,mode=throw|hang]"
// makes rank R fail (throw) or hang at MoE layer L, right after its router, so tests can check
// that one failing or stuck rank ends the whole job with one line naming it. It is a RoutingHook
// like any other: the command wiring installs it only when the variable is set.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "runtime/model/routing.h"

namespace moe::runtime {

class FaultInjection final : public RoutingHook {
 public:
  // The fault MOE_EP_FAULT asks of `rank`, or nullptr when it asks none of it (or is unset).
  // A malformed value throws moe::Error naming it.
  static std::unique_ptr<FaultInjection> from_env(int rank);

  void route(int64_t step, int layer, std::span<const TokenId> tokens, std::span<int32_t> ids,
             std::span<float> weights) override;

 private:
  int layer_ = -1;
  bool hang_ = false;
};

}  // namespace moe::runtime
