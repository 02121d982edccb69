// Synthetic and replayed routing: a RoutingHook that replaces the router's top-k with a seeded
// distribution (uniform, zipf, hotset, drift, topics) or a trace file (replay). route_token is a
// pure function of (spec, step, layer, token): the same token gets the same experts whatever the
// rank count, and the placement analysis calls it directly to make workloads without a model.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/io/routing_spec.h"
#include "runtime/io/trace.h"
#include "runtime/model/routing.h"

namespace moe::runtime {

// What a routing needs to know about the model.
struct RoutingShape {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t num_layers = 0;  // all layers, dense ones included (layer indices are the model's)
  bool normalise = true;   // norm_topk_prob: the k weights sum to 1
  static RoutingShape of(const ModelConfig& config);
};

// Sampling (all kinds but replay): each token's k experts are drawn one at a time without
// replacement from a popularity distribution p over experts (successive sampling: each pick from
// p restricted to the experts not yet picked), in pick order. A token's weights are the p of its
// experts, divided by their sum when `normalise` (as the router renormalises its softmax), so
// the first column is a plain draw from p. Per layer, a seeded permutation decides which experts
// are popular.
//   uniform  p = 1/E.
//   zipf     the expert of popularity rank i (0-based) has p ~ 1/(i+1)^s.
//   hotset   hot_experts experts share hot_share of p evenly, the rest share 1 - hot_share.
//   drift    zipf whose order moves by `shift` ranks every `period` steps: at step t the rank-i
//            expert is the layer's permutation[(i + shift * (t / period)) mod E].
//   topics   each token draws one of `topics` topics (the same in every layer); topic c prefers
//            experts_per_topic experts (permutation entries c*m .. c*m+m-1, mod E):
//            p = (1 - mix)/m on them + mix/E on every expert.
// Replay: token rows come from the trace, bit for bit (ids and weights; equal weights 1/k when
// the trace has none). Which row a token reads: with prompt lengths set (set_prompt_lengths),
// the documented order of runtime/io/trace.h for a run whose step 0 is the prefill of every
// sequence and each later step one token per sequence; without, row = token.position.
class SyntheticRouting final : public RoutingHook {
 public:
  // Throws moe::Error("config") naming spec.source when the spec cannot be met (e.g. hotset
  // larger than the experts, a replay trace that does not match the shape).
  SyntheticRouting(const RoutingSpec& spec, const RoutingShape& shape);

  void route(int64_t step, int layer, std::span<const TokenId> tokens, std::span<int32_t> ids,
             std::span<float> weights) override;
  // One token: ids and weights have top_k entries each.
  void route_token(int64_t step, int layer, TokenId token, std::span<int32_t> ids,
                   std::span<float> weights) const;

  // Replay only: the run's sequences and their prompt lengths (see above).
  void set_prompt_lengths(std::vector<int64_t> prompt_lengths);
  // Replay only: how many trace rows a run of these prompts and `steps` forward steps reads, and
  // how many the trace has.
  int64_t rows_needed(int64_t steps) const;
  int64_t trace_rows() const;

  const RoutingSpec& spec() const { return spec_; }
  const RoutingShape& shape() const { return shape_; }

 private:
  enum class Kind { kUniform, kZipf, kHotset, kDrift, kTopics, kReplay };
  int64_t replay_row(int64_t step, TokenId token) const;
  void sample(int64_t step, int layer, TokenId token, std::span<int32_t> ids,
              std::span<float> weights) const;

  RoutingSpec spec_;
  RoutingShape shape_;
  Kind kind_ = Kind::kUniform;
  std::vector<std::vector<int32_t>> perm_;  // [num_layers][E] popularity rank -> expert
  std::vector<double> zipf_cdf_;            // [E] cumulative popularity by rank (zipf, drift)
  std::vector<double> zipf_p_;              // [E]
  RoutingTrace trace_;                      // replay
  std::vector<int64_t> trace_index_;        // [num_layers] entry of trace_.layers, -1 if none
  std::vector<int64_t> prompt_offsets_;     // replay: [S + 1] prefix sums of prompt lengths
};

// The hook for a spec (nullptr for `router`). Replay traces are checked against the model
// (validate_trace).
std::unique_ptr<SyntheticRouting> make_routing(const RoutingSpec& spec, const ModelConfig& config);

// A workload without the model: num_tokens tokens through every layer in `moe_layers`, token r
// being TokenId{0, r} at step r / tokens_per_step (0: all in step 0), so drift moves every
// tokens_per_step tokens. Weights are included.
RoutingTrace generate_trace(const SyntheticRouting& routing, const std::vector<int64_t>& moe_layers,
                            int64_t num_tokens, int64_t tokens_per_step = 0);
RoutingTrace generate_trace(const RoutingSpec& spec, const ModelConfig& config, int64_t num_tokens,
                            int64_t tokens_per_step = 0);

}  // namespace moe::runtime
