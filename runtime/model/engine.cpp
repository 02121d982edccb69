// Engine: data-parallel sequences, expert-parallel layers. Rank 0 plans each step and broadcasts
// it as one int64 array; ranks without a part of it still step, so the collectives inside each
// MoE layer always line up.
#include "runtime/model/engine.h"

#include <algorithm>
#include <bit>
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

// A step's plan: per entry one sequence's part of the step, in plan order (decode tokens first,
// then prompt chunks in admission order); `tokens` holds every entry's tokens back to back.
struct Engine::Plan {
  struct Entry {
    int64_t id = 0, rank = 0, slot = 0, past_len = 0, num_tokens = 0;
    bool prefill = false;                     // prompt tokens (else the sequence's last new token)
    bool sample = false;                      // this entry's last token gets logits and a new token
    int64_t draw_index = 0, token_index = 0;  // sampling_uniform(seed, draw_index, token_index)
    SamplingParams sampling;
  };
  static constexpr size_t kHeader = 4;  // stop, flush_metrics, entries, tokens
  static constexpr size_t kFields = 12;
  bool stop = false, flush_metrics = false;
  std::vector<Entry> entries;
  std::vector<int32_t> tokens;

  std::vector<int64_t> pack() const {
    std::vector<int64_t> v{stop, flush_metrics, static_cast<int64_t>(entries.size()),
                           static_cast<int64_t>(tokens.size())};
    for (const Entry& e : entries) {
      v.insert(v.end(),
               {e.id, e.rank, e.slot, e.past_len, e.num_tokens, e.prefill, e.sample, e.draw_index,
                e.token_index, e.sampling.top_k, std::bit_cast<int64_t>(e.sampling.temperature),
                std::bit_cast<int64_t>(e.sampling.top_p)});
      v.push_back(static_cast<int64_t>(e.sampling.seed));
    }
    v.insert(v.end(), tokens.begin(), tokens.end());
    return v;
  }
  static Plan unpack(const std::vector<int64_t>& v) {
    Plan p;
    p.stop = v.at(0) != 0;
    p.flush_metrics = v.at(1) != 0;
    const size_t n = static_cast<size_t>(v.at(2)), t = static_cast<size_t>(v.at(3));
    MOE_CHECK(v.size() == kHeader + n * (kFields + 1) + t,
              "engine: step plan of {} values is "
              "malformed ({} entries, {} tokens)",
              v.size(), n, t);
    size_t at = kHeader;
    for (size_t i = 0; i < n; ++i, at += kFields + 1) {
      Entry e;
      e.id = v[at];
      e.rank = v[at + 1];
      e.slot = v[at + 2];
      e.past_len = v[at + 3];
      e.num_tokens = v[at + 4];
      e.prefill = v[at + 5] != 0;
      e.sample = v[at + 6] != 0;
      e.draw_index = v[at + 7];
      e.token_index = v[at + 8];
      e.sampling.top_k = v[at + 9];
      e.sampling.temperature = std::bit_cast<double>(v[at + 10]);
      e.sampling.top_p = std::bit_cast<double>(v[at + 11]);
      e.sampling.seed = static_cast<uint64_t>(v[at + 12]);
      p.entries.push_back(e);
    }
    p.tokens.assign(v.begin() + static_cast<std::ptrdiff_t>(at), v.end());
    return p;
  }
};

Engine::Engine(Model& model, parallel::Communicator& comm, SchedulerLimits limits)
    : model_(model),
      comm_(comm),
      limits_(limits),
      slot_used_(static_cast<size_t>(comm.size()),
                 std::vector<bool>(static_cast<size_t>(model.kv_cache().max_seqs()), false)) {}

int64_t Engine::num_slots() const {
  return static_cast<int64_t>(slot_used_.size() * slot_used_[0].size());
}

int64_t Engine::num_slots_used() const {
  return static_cast<int64_t>(running_.size());
}

void Engine::submit(SequenceSpec spec) {
  const int64_t len = static_cast<int64_t>(spec.prompt.size()) + spec.max_new;
  MOE_CHECK_AS("input", !spec.prompt.empty(), "sequence {}: empty prompt", spec.id);
  MOE_CHECK_AS("input", len <= model_.kv_cache().max_len(),
               "sequence {}: {} prompt tokens plus {} new exceed the context of {}", spec.id,
               spec.prompt.size(), spec.max_new, model_.kv_cache().max_len());
  for (int32_t t : spec.prompt) {
    MOE_CHECK_AS("input", t >= 0 && t < model_.shapes().vocab,
                 "sequence {}: token {} is outside the vocabulary [0, {})", spec.id, t,
                 model_.shapes().vocab);
  }
  spec.sampling.validate();
  waiting_.push_back(std::move(spec));
}

void Engine::cancel(int64_t id) {
  for (Running& r : running_) {
    if (r.spec.id == id) r.cancelled = true;
  }
  std::erase_if(waiting_, [id](const SequenceSpec& s) { return s.id == id; });
}

void Engine::retire(size_t index) {
  const Running& r = running_[index];
  slot_used_[static_cast<size_t>(r.rank)][static_cast<size_t>(r.slot)] = false;
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(index));
}

// Admits the next waiting sequence to the rank with the most free slots (its lowest free slot);
// false when none waits or every slot is taken.
bool Engine::admit_one() {
  if (waiting_.empty()) return false;
  int best = -1;
  int64_t best_free = 0;
  for (size_t r = 0; r < slot_used_.size(); ++r) {
    const int64_t free = std::count(slot_used_[r].begin(), slot_used_[r].end(), false);
    if (free > best_free) {
      best_free = free;
      best = static_cast<int>(r);
    }
  }
  if (best < 0) return false;
  std::vector<bool>& used = slot_used_[static_cast<size_t>(best)];
  const int64_t slot = std::find(used.begin(), used.end(), false) - used.begin();
  used[static_cast<size_t>(slot)] = true;
  Running r;
  r.spec = std::move(waiting_.front());
  waiting_.pop_front();
  r.rank = best;
  r.slot = slot;
  running_.push_back(std::move(r));
  return true;
}

Engine::Plan Engine::plan_step(bool stop, bool flush_metrics) {
  Plan plan;
  plan.stop = stop;
  plan.flush_metrics = flush_metrics;
  if (stop) return plan;
  for (size_t i = running_.size(); i-- > 0;) {
    if (running_[i].cancelled) retire(i);
  }
  const bool may_admit = !limits_.static_batches || running_.empty();
  const bool unlimited = limits_.max_batch_tokens <= 0 || limits_.static_batches;
  int64_t budget = unlimited ? INT64_MAX : limits_.max_batch_tokens;
  auto add = [&](const Running& r, int64_t past, std::span<const int32_t> toks, bool prefill,
                 bool sample) {
    Plan::Entry e;
    e.id = r.spec.id;
    e.rank = r.rank;
    e.slot = r.slot;
    e.past_len = past;
    e.num_tokens = static_cast<int64_t>(toks.size());
    e.prefill = prefill;
    e.sample = sample;
    e.draw_index = r.spec.draw_index;
    e.token_index = r.generated;
    e.sampling = r.spec.sampling;
    plan.entries.push_back(e);
    plan.tokens.insert(plan.tokens.end(), toks.begin(), toks.end());
    if (!unlimited) budget -= e.num_tokens;
  };
  auto add_chunk = [&](const Running& r) {
    const int64_t prompt = static_cast<int64_t>(r.spec.prompt.size());
    const int64_t n = std::min(prompt - r.prefilled, budget);
    const bool last = r.prefilled + n == prompt;
    add(r, r.prefilled,
        std::span<const int32_t>(r.spec.prompt.data() + r.prefilled, static_cast<size_t>(n)), true,
        last && r.spec.max_new > 0);
  };
  // Decode tokens first: a long prompt never holds back running streams.
  for (const Running& r : running_) {
    const int64_t prompt = static_cast<int64_t>(r.spec.prompt.size());
    if (r.prefilled < prompt || budget <= 0) continue;
    add(r, prompt + r.generated - 1, std::span<const int32_t>(&r.last_token, 1), false, true);
  }
  // Then prompt chunks in admission order, admitting new sequences while the budget lasts.
  for (const Running& r : running_) {
    if (r.prefilled < static_cast<int64_t>(r.spec.prompt.size()) && budget > 0) add_chunk(r);
  }
  while (may_admit && budget > 0 && admit_one()) add_chunk(running_.back());
  return plan;
}

void Engine::broadcast_plan(Plan& plan) {
  std::vector<int64_t> packed;
  if (comm_.rank() == 0) packed = plan.pack();
  int64_t size = static_cast<int64_t>(packed.size());
  comm_.broadcast<int64_t>(std::span<int64_t>(&size, 1), 0);
  packed.resize(static_cast<size_t>(size));
  comm_.broadcast<int64_t>(packed, 0);
  if (comm_.rank() != 0) plan = Plan::unpack(packed);
}

std::vector<int32_t> Engine::run_plan(const Plan& plan, StepStats& stats) {
  std::vector<SeqStep> mine;
  std::vector<const Plan::Entry*> sampled;
  std::vector<int64_t> logit_rows;
  int64_t row = 0, token_at = 0;
  for (const Plan::Entry& e : plan.entries) {
    stats.num_tokens += e.num_tokens;
    stats.num_sampled += e.sample;
    stats.prefill |= e.prefill;
    const auto first = plan.tokens.begin() + token_at;
    token_at += e.num_tokens;
    if (e.rank != comm_.rank()) continue;
    mine.push_back({e.id, e.slot, e.past_len, std::vector<int32_t>(first, first + e.num_tokens)});
    row += e.num_tokens;
    if (e.sample) {
      logit_rows.push_back(row - 1);
      sampled.push_back(&e);
    }
  }
  const StepResult r = model_.step(mine, logit_rows);
  const int64_t V = model_.shapes().vocab;
  std::vector<int32_t> chosen;
  for (size_t j = 0; j < sampled.size(); ++j) {
    const Plan::Entry& e = *sampled[j];
    const std::span<const float> logits(r.logits.data() + static_cast<int64_t>(j) * V,
                                        static_cast<size_t>(V));
    chosen.push_back(sample_token(logits, e.sampling,
                                  sampling_uniform(e.sampling.seed, e.draw_index, e.token_index)));
  }
  metrics_.add_step(stats.prefill ? "prefill" : "decode", r);
  return chosen;
}

void Engine::apply_outcome(const Plan& plan, const std::vector<int32_t>& sampled,
                           const StepSink& sink) {
  // `sampled` holds rank r's tokens as block r; each block is in plan order.
  std::vector<size_t> next(static_cast<size_t>(comm_.size()), 0), begin(next.size(), 0);
  for (const Plan::Entry& e : plan.entries) {
    if (e.sample) ++begin[static_cast<size_t>(e.rank)];
  }
  for (size_t r = 0, at = 0; r < begin.size(); ++r) {
    const size_t n = begin[r];
    begin[r] = at;
    at += n;
  }
  for (const Plan::Entry& e : plan.entries) {
    const auto it = std::find_if(running_.begin(), running_.end(),
                                 [&](const Running& r) { return r.spec.id == e.id; });
    MOE_CHECK(it != running_.end(), "engine: planned sequence {} is not running", e.id);
    Running& r = *it;
    const int64_t prompt = static_cast<int64_t>(r.spec.prompt.size());
    if (e.prefill) r.prefilled += e.num_tokens;
    Finish finish = Finish::kRunning;
    if (e.sample) {
      const size_t rank = static_cast<size_t>(e.rank);
      const int32_t tok = sampled.at(begin[rank] + next[rank]++);
      r.last_token = tok;
      ++r.generated;
      if (std::find(eos_ids_.begin(), eos_ids_.end(), tok) != eos_ids_.end()) {
        finish = Finish::kEos;
      } else if (r.generated >= r.spec.max_new) {
        finish = Finish::kLength;
      }
      if (sink) sink(r.spec.id, tok, finish);
    } else if (r.prefilled >= prompt && r.spec.max_new == 0) {
      finish = Finish::kLength;
    }
    if (finish != Finish::kRunning) retire(static_cast<size_t>(it - running_.begin()));
  }
}

StepStats Engine::step(const StepSink& sink, bool stop, bool flush_metrics) {
  Plan plan;
  if (comm_.rank() == 0) plan = plan_step(stop, flush_metrics);
  broadcast_plan(plan);
  StepStats stats;
  stats.stop = plan.stop;
  if (plan.flush_metrics || metrics_.window_full()) metrics_.flush(comm_);
  if (plan.stop || plan.entries.empty()) return stats;
  const auto t0 = Clock::now();
  const std::vector<int32_t> chosen = run_plan(plan, stats);
  stats.seconds = since(t0);
  stats.ran = true;
  const std::vector<int32_t> all =
      gather_rows_to_root(comm_, chosen, 1, static_cast<int64_t>(chosen.size()));
  if (comm_.rank() == 0) apply_outcome(plan, all, sink);
  return stats;
}

ForwardOutput Engine::forward(const TokenBatch& seqs) {
  const int64_t S = static_cast<int64_t>(seqs.size());
  const int64_t V = model_.shapes().vocab;
  std::vector<SeqStep> steps;
  std::vector<int64_t> rows;
  int64_t row = 0;
  for (int64_t i = comm_.rank(); i < S; i += comm_.size()) {
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

GenerateOutput Engine::generate(const TokenBatch& prompts, const GenerateSpec& spec,
                                const TokenSink& sink) {
  spec.sampling.validate();
  MOE_CHECK(idle(), "engine: generate needs an idle engine ({} sequences queued or running)",
            num_waiting() + num_running());
  const int64_t S = static_cast<int64_t>(prompts.size());
  GenerateOutput out;
  const SchedulerLimits limits = limits_;
  limits_ = {0, true};  // the static batch: every prompt in the first step
  if (comm_.rank() == 0) {
    out.tokens.assign(static_cast<size_t>(S), {});
    set_eos_ids(spec.eos_ids);
    for (int64_t i = 0; i < S; ++i) {
      submit({i, prompts[static_cast<size_t>(i)], spec.max_new, spec.sampling, i});
    }
  }
  const StepSink collect = [&](int64_t id, int32_t token, Finish) {
    out.tokens[static_cast<size_t>(id)].push_back(token);
    if (sink) sink(id, token);
  };
  std::vector<double> times;  // prefill, then each decode step
  for (;;) {
    const StepStats st = step(collect, comm_.rank() == 0 && idle());
    if (st.stop) break;
    if (!st.ran) continue;
    if (times.empty()) prefill_flops_ = model_.instrumentation().last_step_flops();
    times.push_back(st.seconds);
  }
  limits_ = limits;
  comm_.all_reduce<double>(times, parallel::ReduceOp::kMax);
  std::vector<double> flops{prefill_flops_};
  comm_.all_reduce<double>(flops, parallel::ReduceOp::kSum);
  prefill_flops_ = flops[0];
  out.prefill_s = times.empty() ? 0.0 : times[0];
  for (size_t i = 1; i < times.size(); ++i) {
    out.decode_step_s.push_back(times[i]);
    out.decode_s += times[i];
  }
  return out;
}

}  // namespace moe::runtime
