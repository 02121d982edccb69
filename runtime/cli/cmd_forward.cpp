// `moe-ep forward`: prefill token sequences and write float32 logits [sequences, max_len, vocab]
// as .npy on rank 0 (rows past a sequence's end are NaN; sequence i runs on rank i mod N).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>

#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/cli/session.h"
#include "runtime/io/npy.h"
#include "runtime/model/engine.h"
#include "runtime/model/metrics.h"

namespace moe::runtime {
namespace {

struct ForwardArgs {
  ModelOptions model;
  std::string tokens, logits_out;
};

int run_forward(const ForwardArgs& a) {
  const ModelOptions& o = a.model;
  // Parse once before building anything so a bad --tokens fails fast on every rank alike.
  const ModelConfig probe = load_model_config(o.model);
  const TokenBatch batch = parse_token_batch(a.tokens, probe.vocab_size);
  check_context_fits(probe, max_length(batch), "--tokens");
  auto s = open_session(o, static_cast<int64_t>(batch.size()), max_length(batch));
  Engine engine(*s->model, *s->comm);
  const ForwardOutput out = engine.forward(batch);
  const MetricsReport metrics = engine.metrics().reduce(*s->comm, s->model->instrumentation());
  write_trace_out(*s, o);
  if (s->rank() != 0) return 0;
  write_npy_f32(a.logits_out, out.shape, out.logits);
  if (!o.quiet) {
    fmt::print(stderr, "moe-ep: wrote logits [{}] to {}\n", fmt::join(out.shape, ", "),
               a.logits_out);
  }
  if (!o.json.empty()) {
    write_json(o.json, {{"command", "forward"},
                        {"logits_shape", out.shape},
                        {"logits_out", a.logits_out},
                        {"memory_rank0", memory_json(*s)},
                        {"load_per_rank", s->load_per_rank},
                        {"metrics", metrics.to_json(true)}});
  }
  return 0;
}

}  // namespace

Command add_forward_command(CLI::App& app) {
  auto a = std::make_shared<ForwardArgs>();
  auto* cmd = app.add_subcommand(
      "forward",
      "Prefill sequences and write float32 logits [sequences, max_len, vocab] as .npy "
      "(rows past a sequence's end are NaN; sequence i runs on rank i mod N)");
  add_model_options(cmd, a->model, true);
  cmd->add_option("--tokens", a->tokens, "Token ids: sequences separated by ';', ids by ','")
      ->required();
  cmd->add_option("--logits-out", a->logits_out, "Output .npy file")->required();
  return {cmd, [a] { return run_forward(*a); }};
}

}  // namespace moe::runtime
