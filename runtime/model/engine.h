// The engine: spreads a batch of sequences over ranks (sequence i on rank i mod N, cache slot
// i / N), drives Model::step for prefill and decode, gathers outputs on rank 0 and times the
// phases. Every public call is collective: all ranks call it with the same arguments.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/model/metrics.h"
#include "runtime/model/model.h"
#include "runtime/model/sampling.h"

namespace moe::runtime {

using TokenBatch = std::vector<std::vector<int32_t>>;

// Parses "1,2,3;4,5" into sequences; throws moe::Error naming the bad piece.
TokenBatch parse_token_batch(const std::string& text, int64_t vocab_size);
// One comma-separated item of an id list: blanks around it are dropped from `item`; returns its
// value when what remains is an integer, nothing otherwise (also for an empty item).
std::optional<int64_t> parse_id_item(std::string& item);

struct ForwardOutput {
  std::vector<int64_t> shape;  // [num_sequences, max_len, vocab] (rank 0 only)
  std::vector<float> logits;   // rows past a sequence's end are NaN (rank 0 only)
};

struct GenerateSpec {
  int64_t max_new = 16;          // new tokens per sequence at most
  SamplingParams sampling;       // temperature 0: greedy
  std::vector<int32_t> eos_ids;  // a sequence ends after emitting one of these (kept in its output)
};
// Rank 0: called for every new token as soon as the step that made it ends, in sequence order
// within a step.
using TokenSink = std::function<void(int64_t sequence, int32_t token)>;

struct GenerateOutput {
  TokenBatch tokens;  // new tokens per sequence, up to its end of sequence (rank 0 only)
  double prefill_s = 0, decode_s = 0;  // max over ranks
  std::vector<double> decode_step_s;   // per step, max over ranks
};

class Engine {
 public:
  Engine(Model& model, parallel::Communicator& comm);

  // Prefill every sequence; rank 0 receives all logits.
  ForwardOutput forward(const TokenBatch& seqs);
  // Greedy decode of max_new tokens after each prompt (prefill, then one-token steps reusing the
  // KV cache). Rank 0 receives the tokens.
  GenerateOutput generate(const TokenBatch& prompts, int64_t max_new);
  // Decoding as `spec` says; steps go on while any sequence is unfinished. Every rank learns
  // after each step how many sequences remain; rank 0 hands each new token to `sink`.
  GenerateOutput generate(const TokenBatch& prompts, const GenerateSpec& spec,
                          const TokenSink& sink);

  MetricsCollector& metrics() { return metrics_; }
  static int64_t slots_needed(int64_t num_sequences, int num_ranks) {
    return (num_sequences + num_ranks - 1) / num_ranks;
  }
  double prefill_flops() const { return prefill_flops_; }  // summed over ranks

 private:
  std::vector<int64_t> local_indices(int64_t num_sequences) const;
  // This step's token of each active sequence of this rank (-1 for finished ones): rows of r's
  // logits in order, sampled with the draw of (seed, sequence, step).
  std::vector<int32_t> choose_tokens(const StepResult& r, const std::vector<bool>& active,
                                     const std::vector<int64_t>& mine,
                                     const SamplingParams& sampling, int64_t step) const;
  // Collective: rank 0 appends every sequence's token to `out` and passes it to `sink`.
  void deliver_on_root(const std::vector<int32_t>& chosen, int64_t num_sequences,
                       const TokenSink& sink, GenerateOutput& out);

  Model& model_;
  parallel::Communicator& comm_;
  MetricsCollector metrics_;
  double prefill_flops_ = 0;
};

}  // namespace moe::runtime
