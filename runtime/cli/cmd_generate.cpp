// `moe-ep generate`: greedy decoding with the KV cache; rank 0 prints the new token ids of each
// sequence, one line per sequence.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>

#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/cli/session.h"
#include "runtime/model/engine.h"
#include "runtime/model/metrics.h"

namespace moe::runtime {
namespace {

struct GenerateArgs {
  ModelOptions model;
  std::string tokens;
  int64_t max_new_tokens = 16;
};

int run_generate(const GenerateArgs& a) {
  const ModelOptions& o = a.model;
  const ModelConfig probe = load_model_config(o.model);
  const TokenBatch batch = parse_token_batch(a.tokens, probe.vocab_size);
  const int64_t context = max_length(batch) + a.max_new_tokens;
  check_context_fits(probe, context, "--tokens plus --max-new-tokens");
  auto s = open_session(o, static_cast<int64_t>(batch.size()), context);
  Engine engine(*s->model, *s->comm);
  const GenerateOutput out = engine.generate(batch, a.max_new_tokens);
  const MetricsReport metrics =
      engine.metrics().reduce(*s->comm, s->model->times(), s->model->timing_method());
  write_trace_out(*s, o);
  if (s->rank() != 0) return 0;
  for (const auto& seq : out.tokens) fmt::print("{}\n", fmt::join(seq, ","));
  if (!o.json.empty()) {
    write_json(o.json, {{"command", "generate"},
                        {"tokens", out.tokens},
                        {"prefill_s", out.prefill_s},
                        {"decode_s", out.decode_s},
                        {"memory_rank0", memory_json(*s)},
                        {"load_per_rank", s->load_per_rank},
                        {"metrics", metrics.to_json(true)}});
  }
  return 0;
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand(
      "generate", "Greedy decoding with the KV cache; prints the new token ids of each sequence");
  add_model_options(cmd, a->model, true);
  cmd->add_option("--tokens", a->tokens, "Prompt token ids: sequences ';', ids ','")->required();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "New tokens per sequence (default 16)")
      ->check(at_least(1));
  return {cmd, [a] { return run_generate(*a); }};
}

}  // namespace moe::runtime
