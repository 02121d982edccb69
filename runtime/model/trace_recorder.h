// Records a run's routing for `--trace-out`: a RoutingHook that keeps every MoE layer's top-k
// ids and weights of this rank's tokens (installed after any hook that chooses them), and a
// collective gather that puts every rank's rows on rank 0 in the order of runtime/io/trace.h
// (step, then sequence, then position), so the file is the same for any rank count.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/io/config.h"
#include "runtime/io/trace.h"
#include "runtime/model/routing.h"

namespace moe::runtime {

class TraceRecorder final : public RoutingHook {
 public:
  explicit TraceRecorder(const ModelConfig& config);

  void route(int64_t step, int layer, std::span<const TokenId> tokens, std::span<int32_t> ids,
             std::span<float> weights) override;

  // Collective: every rank's rows gathered on rank 0 (the full trace there, an empty trace
  // elsewhere).
  RoutingTrace gather(parallel::Communicator& comm) const;

 private:
  struct LayerRecord {
    std::vector<int64_t> keys;   // [rows, 3] (step, sequence, position)
    std::vector<int32_t> ids;    // [rows, top_k]
    std::vector<float> weights;  // [rows, top_k]
  };
  int64_t num_experts_, top_k_, num_layers_;
  std::vector<int64_t> moe_layers_;
  std::vector<int64_t> slot_of_layer_;  // [num_layers] index into records_, -1 for dense layers
  std::vector<LayerRecord> records_;
};

}  // namespace moe::runtime
