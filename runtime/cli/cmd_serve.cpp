// `moe-ep serve`: an OpenAI-compatible HTTP server (runtime/serve). Every rank opens the model;
// rank 0 also serves HTTP and schedules (continuous batching); every rank runs every step.
// SIGTERM or SIGINT: stop accepting, finish running requests within --grace-s, exit 0.
#include <fmt/format.h>

#include <atomic>
#include <csignal>
#include <memory>

#include "kernels/common/check.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/cli/session.h"
#include "runtime/cli/text_io.h"
#include "runtime/model/engine.h"
#include "runtime/model/rebalancer.h"
#include "runtime/serve/serve_loop.h"

namespace moe::runtime {
namespace {

enum class Schedule { kContinuous, kStatic };

struct ServeArgs {
  ModelOptions model;
  std::string config;  // run YAML: model settings and the rebalance: block
  std::vector<std::string> sets;
  std::string tokenizer;
  serve::FrontOptions front;
  int64_t max_seqs = 16;
  int64_t max_batch_tokens = 512;
  int64_t max_model_len = 0;  // 0: min(4096, the model's max_position_embeddings)
  int64_t max_queue = 256;
  Schedule schedule = Schedule::kContinuous;
  double grace_s = 30;
};

std::atomic<bool> g_stop_serving{false};

extern "C" void on_stop_signal(int) {
  g_stop_serving = true;
}

// SIGTERM and SIGINT end the serve loop (rank 0 drives it; other ranks wait for its plan, so a
// launcher that signals every rank still gets an orderly end); SIGPIPE (a client gone while a
// response is written) is an error on that connection only.
void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int run_serve(ServeArgs& a, const CLI::App& cmd) {
  std::optional<RunConfig> rc;
  if (!a.config.empty()) {
    rc = load_run_config(a.config, a.sets);
    a.model = model_options_with_run_config(a.model, cmd, *rc);
  }
  const ModelOptions& o = a.model;
  MOE_CHECK_AS("input", !o.model.empty(), "serve needs --model or --config");
  const ModelConfig probe = load_model_config(o.model);
  if (a.max_model_len == 0)
    a.max_model_len = std::min<int64_t>(4096, probe.max_position_embeddings);
  check_context_fits(probe, a.max_model_len, "--max-model-len");
  MOE_CHECK_AS("input", a.max_batch_tokens >= a.max_seqs,
               "--max-batch-tokens ({}) must be at least --max-seqs ({}): every running sequence "
               "decodes one token per step",
               a.max_batch_tokens, a.max_seqs);
  const std::string tokenizer_dir = resolve_tokenizer_dir(a.tokenizer, o.model);
  install_signal_handlers();
  auto s = open_session(o, a.max_seqs, a.max_model_len);
  std::unique_ptr<Rebalancer> rebalancer;
  if (rc && rc->rebalance.enabled())
    rebalancer = std::make_unique<Rebalancer>(rc->rebalance, *s->model, *s->comm);
  const bool static_batches = a.schedule == Schedule::kStatic;
  Engine engine(*s->model, *s->comm, {a.max_batch_tokens, static_batches});
  if (s->rank() == 0) {
    const Tokenizer tokenizer = Tokenizer::from_dir(tokenizer_dir);
    engine.set_eos_ids(read_eos_ids({o.model, tokenizer_dir}));
    if (a.front.model_name.empty()) a.front.model_name = s->config.name;
    serve::RequestQueue queue(a.max_queue);
    serve::ServeMetrics metrics;
    serve::HttpFront front(a.front, tokenizer, {a.max_model_len, s->config.vocab_size}, queue,
                           metrics);
    const int port = front.start();
    fmt::print(stderr,
               "moe-ep: serving {} on http://{}:{} ({} rank(s), {} KV slots of {} tokens, {} "
               "batching, at most {} tokens per step)\n",
               a.front.model_name, a.front.host, port, s->size(), engine.num_slots(),
               a.max_model_len, static_batches ? "static" : "continuous", a.max_batch_tokens);
    serve::LoopOptions loop;
    loop.static_batches = static_batches;
    loop.grace_s = a.grace_s;
    serve::run_rank0(engine, front, queue, metrics, loop, g_stop_serving);
    front.stop();
  } else {
    serve::follow(engine);
  }
  const MetricsReport report = engine.metrics().reduce(*s->comm, s->model->instrumentation());
  if (rebalancer) rebalancer->finish();
  write_trace_out(*s, o);
  if (s->rank() == 0) {
    fmt::print(stderr, "moe-ep: stopped after {} steps\n", engine.metrics().steps_total());
    if (!o.json.empty()) {
      nlohmann::json j = {{"command", "serve"}, {"metrics", report.to_json(true)}};
      if (rebalancer) j["rebalance"] = rebalancer->to_json();
      write_json(o.json, j);
    }
  }
  return 0;
}

}  // namespace

Command add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand(
      "serve",
      "OpenAI-compatible HTTP server (chat/completions, completions, streaming) with continuous "
      "batching across ranks; rank 0 listens");
  add_model_options(cmd, a->model, false);
  cmd->add_option("--config", a->config,
                  "Run YAML instead of --model: its model settings and rebalance: block");
  cmd->add_option("--set", a->sets, "Override a key of the run YAML: key=value (repeatable)");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Directory holding tokenizer.json (default: --model when it is a checkpoint "
                  "directory)");
  cmd->add_option("--host", a->front.host, "Address to listen on (default 127.0.0.1)");
  cmd->add_option("--port", a->front.port, "Port (default 8000; 0: any free port)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", a->front.api_key,
                  "Require 'Authorization: Bearer KEY' on /v1/* requests");
  cmd->add_option("--served-model-name", a->front.model_name,
                  "The model name /v1/models lists (default: the model config's name)");
  cmd->add_option("--max-seqs", a->max_seqs, "Sequences running at once, all ranks (default 16)")
      ->check(at_least(1));
  cmd->add_option("--max-batch-tokens", a->max_batch_tokens,
                  "Tokens of one step, all ranks: decode tokens first, then prompt chunks "
                  "(default 512)")
      ->check(at_least(1));
  cmd->add_option("--max-model-len", a->max_model_len,
                  "Prompt plus new tokens of one request (default min(4096, the model's "
                  "max_position_embeddings))")
      ->check(at_least(2));
  cmd->add_option("--max-queue", a->max_queue,
                  "Requests waiting for a KV slot; beyond it: 429 (default 256)")
      ->check(at_least(0));
  add_choice<Schedule>(cmd, "--schedule", a->schedule,
                       {{"continuous", Schedule::kContinuous}, {"static", Schedule::kStatic}},
                       "continuous (default): admit and retire at every step; static: admit "
                       "only when nothing runs (the static-batch baseline)");
  cmd->add_option("--grace-s", a->grace_s,
                  "After SIGTERM: seconds running requests may take before they get 503 "
                  "(default 30)")
      ->check(at_least(0));
  cmd->add_option("--read-timeout-s", a->front.read_timeout_s,
                  "A request not fully received by then gets 400; idle connections close "
                  "(default 10)")
      ->check(at_least(1));
  cmd->add_option("--max-body-bytes", a->front.max_body_bytes,
                  "Larger request bodies get 413 (default 1048576)")
      ->check(at_least(1024));
  return {cmd, [a, cmd] { return run_serve(*a, *cmd); }};
}

}  // namespace moe::runtime
