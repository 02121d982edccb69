// The engine: runs sequences across ranks in steps, admitting and retiring them at step
// boundaries (continuous batching). Rank 0 schedules: each step carries every decoding sequence's
// next token first, then prompt chunks in admission order, within a token budget; a new sequence
// goes to the rank with the most free KV slots (lowest rank on ties, then its lowest free slot).
// Rank 0 broadcasts the step's plan and every rank runs the same step (a rank with no part of it
// passes an empty batch, so the MoE collectives line up). `generate` is the static batch: every
// prompt admitted at once and prefilled in one step, so sequence i runs on rank i mod N, slot
// i / N. Every public call is collective unless it says rank 0.
#pragma once

#include <cstdint>
#include <deque>
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

// A sequence handed to the scheduler (rank 0).
struct SequenceSpec {
  int64_t id = 0;  // unique in the job: routing hooks and traces know the sequence by it
  std::vector<int32_t> prompt;
  int64_t max_new = 16;  // new tokens at most (0: prefill only)
  SamplingParams sampling;
  int64_t draw_index = 0;  // the `sequence` of sampling_uniform: the same id gives the same draws
};

enum class Finish { kRunning, kEos, kLength };

// Rank 0: a new token of sequence `id`; `finish` is kRunning unless it was the sequence's last.
using StepSink = std::function<void(int64_t id, int32_t token, Finish finish)>;

struct SchedulerLimits {
  int64_t max_batch_tokens = 0;  // tokens of one step, all ranks together; 0: no limit
  bool static_batches = false;   // admit only when nothing runs (each batch's prompts in one step)
};

// What one step did (the same on every rank).
struct StepStats {
  bool stop = false;     // rank 0 ended the loop: no step ran
  bool ran = false;      // a forward ran (false: nothing was scheduled)
  bool prefill = false;  // it carried prompt tokens
  int64_t num_tokens = 0, num_sampled = 0;
  double seconds = 0;  // this rank's time in the forward and sampling
};

class Engine {
 public:
  Engine(Model& model, parallel::Communicator& comm, SchedulerLimits limits = {});

  // Prefill every sequence; rank 0 receives all logits.
  ForwardOutput forward(const TokenBatch& seqs);
  // Greedy decode of max_new tokens after each prompt (prefill, then one-token steps reusing the
  // KV cache). Rank 0 receives the tokens.
  GenerateOutput generate(const TokenBatch& prompts, int64_t max_new);
  // Decoding as `spec` says; steps go on while any sequence is unfinished; rank 0 hands each new
  // token to `sink`. The engine must be idle (no sequence submitted).
  GenerateOutput generate(const TokenBatch& prompts, const GenerateSpec& spec,
                          const TokenSink& sink);

  // ---- The scheduler (rank 0 only).
  void set_eos_ids(std::vector<int32_t> eos_ids) { eos_ids_ = std::move(eos_ids); }
  // Queues a sequence; it is admitted when a KV slot is free. Its prompt plus max_new must fit a
  // slot (throws moe::Error("input") otherwise).
  void submit(SequenceSpec spec);
  // Retires the sequence at the next step boundary (its slot is free for that step's plan).
  void cancel(int64_t id);
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_slots() const;       // KV slots of the job
  int64_t num_slots_used() const;  // held by admitted sequences
  bool idle() const { return waiting_.empty() && running_.empty(); }

  // ---- One step (collective). Rank 0 plans it (retires cancelled sequences, admits, chunks) and
  // broadcasts the plan; every rank runs its part; rank 0 passes the new tokens to `sink` in plan
  // order. `stop` (read on rank 0) ends the loop instead: every rank gets stats.stop. With
  // `flush_metrics` (rank 0's) every rank folds its pending step metrics into the totals.
  StepStats step(const StepSink& sink, bool stop = false, bool flush_metrics = false);

  MetricsCollector& metrics() { return metrics_; }
  static int64_t slots_needed(int64_t num_sequences, int num_ranks) {
    return (num_sequences + num_ranks - 1) / num_ranks;
  }
  double prefill_flops() const { return prefill_flops_; }  // summed over ranks

 private:
  struct Plan;
  struct Running {
    SequenceSpec spec;
    int rank = 0;
    int64_t slot = 0;
    int64_t prefilled = 0;  // prompt tokens in the cache
    int64_t generated = 0;  // new tokens so far
    int32_t last_token = -1;
    bool cancelled = false;
  };
  Plan plan_step(bool stop, bool flush_metrics);
  bool admit_one();
  void broadcast_plan(Plan& plan);
  // This rank's part of the step; returns its sampled tokens in plan order.
  std::vector<int32_t> run_plan(const Plan& plan, StepStats& stats);
  // Rank 0: applies the step's outcome to the scheduler and calls `sink`.
  void apply_outcome(const Plan& plan, const std::vector<int32_t>& sampled, const StepSink& sink);
  void retire(size_t index);

  Model& model_;
  parallel::Communicator& comm_;
  SchedulerLimits limits_;
  MetricsCollector metrics_;
  double prefill_flops_ = 0;
  // rank 0's scheduler state
  std::vector<int32_t> eos_ids_;
  std::deque<SequenceSpec> waiting_;
  std::vector<Running> running_;              // admission order
  std::vector<std::vector<bool>> slot_used_;  // [rank][slot]
};

}  // namespace moe::runtime
