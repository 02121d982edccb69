// Engine: data-parallel sequences, expert-parallel layers. Ranks without sequences still step,
// so the collectives inside each MoE layer always line up.
#include "runtime/model/engine.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>

#include "kernels/common/check.h"
#include "kernels/cpu/host.h"

namespace moe::runtime {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Gathers every rank's rows [local_rows, row_width] on rank 0, in rank order.
template <class T>
std::vector<T> gather_rows_to_root(parallel::Communicator& comm, const std::vector<T>& local,
                                   int64_t row_width, int64_t local_rows) {
  std::vector<int64_t> rows_per_rank(static_cast<size_t>(comm.size()));
  comm.all_gather<int64_t>(std::span<const int64_t>(&local_rows, 1), rows_per_rank);
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (int64_t r : rows_per_rank) {
    counts.push_back(r * row_width);
    total += r * row_width;
  }
  std::vector<T> all(comm.rank() == 0 ? static_cast<size_t>(total) : 0);
  comm.gather_v<T>(local, all, counts, 0);
  return all;
}

}  // namespace

std::optional<int64_t> parse_id_item(std::string& item) {
  const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
  item = b == std::string::npos ? std::string() : item.substr(b, e - b + 1);
  if (item.empty()) return std::nullopt;
  size_t pos = 0;
  try {
    const long long v = std::stoll(item, &pos);
    if (pos == item.size()) return v;
  } catch (const std::logic_error&) {
  }
  return std::nullopt;
}

TokenBatch parse_token_batch(const std::string& text, int64_t vocab_size) {
  TokenBatch batch;
  std::stringstream seqs(text);
  std::string seq;
  while (std::getline(seqs, seq, ';')) {
    std::vector<int32_t> ids;
    std::stringstream items(seq);
    std::string item;
    while (std::getline(items, item, ',')) {
      const std::optional<int64_t> parsed = parse_id_item(item);
      MOE_CHECK_AS("input", !item.empty(), "--tokens: empty token in sequence {} of '{}'",
                   batch.size(), text);
      MOE_CHECK_AS("input", parsed.has_value(), "--tokens: '{}' in sequence {} is not an integer",
                   item, batch.size());
      const int64_t v = *parsed;
      MOE_CHECK_AS("input", v >= 0 && v < vocab_size,
                   "--tokens: token {} in sequence {} is outside the vocabulary [0, {})", v,
                   batch.size(), vocab_size);
      ids.push_back(static_cast<int32_t>(v));
    }
    MOE_CHECK_AS("input", !ids.empty(), "--tokens: sequence {} of '{}' is empty", batch.size(),
                 text);
    batch.push_back(std::move(ids));
  }
  MOE_CHECK_AS("input", !batch.empty(), "--tokens: no sequences in '{}'", text);
  return batch;
}

Engine::Engine(Model& model, parallel::Communicator& comm) : model_(model), comm_(comm) {}

std::vector<int64_t> Engine::local_indices(int64_t num_sequences) const {
  std::vector<int64_t> idx;
  for (int64_t i = comm_.rank(); i < num_sequences; i += comm_.size()) idx.push_back(i);
  return idx;
}

ForwardOutput Engine::forward(const TokenBatch& seqs) {
  const int64_t S = static_cast<int64_t>(seqs.size());
  const int64_t V = model_.shapes().vocab;
  std::vector<SeqStep> steps;
  std::vector<int64_t> rows;
  int64_t row = 0;
  const auto mine = local_indices(S);
  for (int64_t i : mine) {
    steps.push_back({i, i / comm_.size(), 0, seqs[static_cast<size_t>(i)]});
    for (size_t t = 0; t < seqs[static_cast<size_t>(i)].size(); ++t) rows.push_back(row++);
  }
  StepResult r = model_.step(steps, rows);
  metrics_.add_step("prefill", r);
  std::vector<float> all = gather_rows_to_root(comm_, r.logits, V, row);

  ForwardOutput out;
  if (comm_.rank() != 0) return out;
  int64_t max_len = 0;
  for (const auto& s : seqs) max_len = std::max<int64_t>(max_len, static_cast<int64_t>(s.size()));
  out.shape = {S, max_len, V};
  out.logits.assign(static_cast<size_t>(S * max_len * V), std::numeric_limits<float>::quiet_NaN());
  // Rank r's block holds its sequences r, r+N, ... in order.
  int64_t offset = 0;
  for (int rank = 0; rank < comm_.size(); ++rank) {
    for (int64_t i = rank; i < S; i += comm_.size()) {
      const int64_t len = static_cast<int64_t>(seqs[static_cast<size_t>(i)].size());
      std::copy(all.begin() + offset, all.begin() + offset + len * V,
                out.logits.begin() + i * max_len * V);
      offset += len * V;
    }
  }
  return out;
}

GenerateOutput Engine::generate(const TokenBatch& prompts, int64_t max_new) {
  GenerateSpec spec;
  spec.max_new = max_new;
  return generate(prompts, spec, nullptr);
}

std::vector<int32_t> Engine::choose_tokens(const StepResult& r, const std::vector<bool>& active,
                                           const std::vector<int64_t>& mine,
                                           const SamplingParams& sampling, int64_t step) const {
  // r.logits holds one row per active sequence of this rank, in order.
  const int64_t V = model_.shapes().vocab;
  std::vector<int32_t> chosen(mine.size(), -1);
  int64_t logit_row = 0;
  for (size_t j = 0; j < mine.size(); ++j) {
    if (!active[j]) continue;
    const std::span<const float> logits(r.logits.data() + logit_row++ * V, static_cast<size_t>(V));
    chosen[j] = sample_token(logits, sampling, sampling_uniform(sampling.seed, mine[j], step));
  }
  return chosen;
}

void Engine::deliver_on_root(const std::vector<int32_t>& chosen, int64_t num_sequences,
                             const TokenSink& sink, GenerateOutput& out) {
  // Rank 0 learns this step's tokens (rank r's block: its sequences r, r + N, ...).
  const std::vector<int32_t> all =
      gather_rows_to_root(comm_, chosen, 1, static_cast<int64_t>(chosen.size()));
  if (comm_.rank() != 0) return;
  std::vector<int32_t> by_sequence(static_cast<size_t>(num_sequences), -1);
  int64_t offset = 0;
  for (int rank = 0; rank < comm_.size(); ++rank) {
    for (int64_t i = rank; i < num_sequences; i += comm_.size()) by_sequence[i] = all[offset++];
  }
  for (int64_t i = 0; i < num_sequences; ++i) {
    if (by_sequence[i] < 0) continue;
    out.tokens[static_cast<size_t>(i)].push_back(by_sequence[i]);
    if (sink) sink(i, by_sequence[i]);
  }
}

GenerateOutput Engine::generate(const TokenBatch& prompts, const GenerateSpec& spec,
                                const TokenSink& sink) {
  spec.sampling.validate();
  const int64_t S = static_cast<int64_t>(prompts.size());
  const int64_t max_new = spec.max_new;
  const auto mine = local_indices(S);
  const int64_t n = static_cast<int64_t>(mine.size());
  GenerateOutput out;
  if (comm_.rank() == 0) out.tokens.assign(static_cast<size_t>(S), {});

  std::vector<SeqStep> steps;  // this rank's sequences, in order
  std::vector<int64_t> last_rows;
  int64_t row = 0;
  for (int64_t i : mine) {
    steps.push_back({i, i / comm_.size(), 0, prompts[static_cast<size_t>(i)]});
    row += static_cast<int64_t>(prompts[static_cast<size_t>(i)].size());
    last_rows.push_back(row - 1);
  }
  std::vector<bool> active(static_cast<size_t>(n), true);
  std::vector<double> times;  // prefill, then each decode step

  auto t0 = Clock::now();
  StepResult r = model_.step(steps, max_new > 0 ? last_rows : std::vector<int64_t>{});
  times.push_back(since(t0));
  prefill_flops_ = model_.instrumentation().last_step_flops();
  metrics_.add_step("prefill", r);
  for (int64_t step = 0; step < max_new; ++step) {
    const std::vector<int32_t> chosen = choose_tokens(r, active, mine, spec.sampling, step);
    deliver_on_root(chosen, S, sink, out);
    std::vector<SeqStep> next;
    for (int64_t j = 0; j < n; ++j) {
      if (!active[static_cast<size_t>(j)]) continue;
      const int32_t tok = chosen[static_cast<size_t>(j)];
      const bool eos =
          std::find(spec.eos_ids.begin(), spec.eos_ids.end(), tok) != spec.eos_ids.end();
      SeqStep& s = steps[static_cast<size_t>(j)];
      s.past_len += static_cast<int64_t>(s.tokens.size());
      s.tokens = {tok};
      if (eos) {
        active[static_cast<size_t>(j)] = false;
      } else {
        next.push_back(s);
      }
    }
    if (step + 1 == max_new) break;
    std::vector<int64_t> num_active{static_cast<int64_t>(next.size())};
    comm_.all_reduce<int64_t>(num_active, parallel::ReduceOp::kSum);
    if (num_active[0] == 0) break;
    std::vector<int64_t> rows;
    for (int64_t j = 0; j < static_cast<int64_t>(next.size()); ++j) rows.push_back(j);
    t0 = Clock::now();
    r = model_.step(next, rows);
    times.push_back(since(t0));
    metrics_.add_step("decode", r);
  }

  comm_.all_reduce<double>(times, parallel::ReduceOp::kMax);
  std::vector<double> flops{prefill_flops_};
  comm_.all_reduce<double>(flops, parallel::ReduceOp::kSum);
  prefill_flops_ = flops[0];
  out.prefill_s = times[0];
  for (size_t i = 1; i < times.size(); ++i) {
    out.decode_step_s.push_back(times[i]);
    out.decode_s += times[i];
  }
  return out;
}

}  // namespace moe::runtime
