// Next-token choice from one row of logits: greedy (temperature 0) or sampled after temperature,
// top-k and top-p. The random draw depends only on (seed, sequence index, step), never on the
// rank that holds the sequence, so the same seed gives the same text for any rank count.
#pragma once

#include <cstdint>
#include <span>

namespace moe::runtime {

struct SamplingParams {
  double temperature = 0;  // 0: greedy (argmax, lowest id on ties)
  int64_t top_k = 0;       // keep the k most likely tokens; 0: all
  double top_p = 1;        // keep the smallest most-likely set whose probability reaches p
  uint64_t seed = 0;

  void validate() const;  // throws moe::Error("input") for values outside their ranges
};

// A uniform number in [0, 1) for sequence `sequence` at decode step `step`.
double sampling_uniform(uint64_t seed, int64_t sequence, int64_t step);

// The token for `logits` ([vocab]); `uniform` is the draw in [0, 1) (unused when greedy).
int32_t sample_token(std::span<const float> logits, const SamplingParams& params, double uniform);

}  // namespace moe::runtime
