// `moe-ep generate`: decoding with the KV cache. With --tokens, greedy and rank 0 prints the new
// ids of each sequence, one line per sequence. With --prompt / --prompts-file, text in and out:
// prompts encoded by the tokenizer (optionally in Qwen3's chat format), sampling as asked,
// stopping at generation_config.json's EOS ids, rank 0 streaming the text as it is made.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <memory>

#include "kernels/common/check.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/cli/session.h"
#include "runtime/cli/text_io.h"
#include "runtime/model/engine.h"
#include "runtime/model/metrics.h"

namespace moe::runtime {
namespace {

struct GenerateArgs {
  ModelOptions model;
  std::string tokens;
  int64_t max_new_tokens = 16;
  // text mode
  std::string prompt;
  std::string prompts_file;
  std::string tokenizer;
  PromptOptions prompt_options;
  std::string system;
  SamplingParams sampling;
};

bool text_mode(const GenerateArgs& a) {
  return !a.prompt.empty() || !a.prompts_file.empty();
}

int run_generate(const GenerateArgs& a) {
  const ModelOptions& o = a.model;
  const ModelConfig probe = load_model_config(o.model);
  std::optional<Tokenizer> tokenizer;
  std::vector<int32_t> eos_ids;
  TokenBatch batch;
  if (text_mode(a)) {
    a.sampling.validate();
    const std::string dir = resolve_tokenizer_dir(a.tokenizer, o.model);
    tokenizer.emplace(Tokenizer::from_dir(dir));
    const std::vector<std::string> prompts =
        a.prompts_file.empty() ? std::vector<std::string>{a.prompt} : read_lines(a.prompts_file);
    MOE_CHECK_AS("input", !prompts.empty(), "{}: no prompts", a.prompts_file);
    batch = encode_prompts(*tokenizer, prompts, a.prompt_options);
    for (size_t i = 0; i < batch.size(); ++i) {
      MOE_CHECK_AS("input", !batch[i].empty(), "prompt {} is empty", i);
      for (int32_t id : batch[i])
        MOE_CHECK_AS("input", id < probe.vocab_size,
                     "prompt {} has token id {}, outside the model's vocabulary of {} ({} does "
                     "not belong to this model)",
                     i, id, probe.vocab_size, tokenizer->source());
    }
    eos_ids = read_eos_ids({o.model, dir});
  } else {
    batch = parse_token_batch(a.tokens, probe.vocab_size);
  }
  const int64_t context = max_length(batch) + a.max_new_tokens;
  check_context_fits(
      probe, context,
      text_mode(a) ? "the longest prompt plus --max-new-tokens" : "--tokens plus --max-new-tokens");
  auto s = open_session(o, static_cast<int64_t>(batch.size()), context);
  Engine engine(*s->model, *s->comm);

  GenerateSpec spec;
  spec.max_new = a.max_new_tokens;
  std::unique_ptr<TextStreamPrinter> printer;
  if (text_mode(a)) {
    spec.sampling = a.sampling;
    spec.eos_ids = eos_ids;
    if (s->rank() == 0)
      printer = std::make_unique<TextStreamPrinter>(*tokenizer, static_cast<int64_t>(batch.size()),
                                                    a.max_new_tokens, eos_ids, stdout);
  }
  const GenerateOutput out = engine.generate(
      batch, spec,
      printer ? TokenSink([&](int64_t i, int32_t tok) { printer->on_token(i, tok); }) : nullptr);
  const MetricsReport metrics = engine.metrics().reduce(*s->comm, s->model->instrumentation());
  write_trace_out(*s, o);
  if (s->rank() != 0) return 0;
  if (printer) {
    printer->finish();
    if (printer->num_unknown_ids() > 0)
      log0(*s, false,
           fmt::format("{} generated ids are outside {} and were not printed",
                       printer->num_unknown_ids(), tokenizer->source()));
  } else {
    for (const auto& seq : out.tokens) fmt::print("{}\n", fmt::join(seq, ","));
  }
  if (!o.json.empty()) {
    nlohmann::json j = {{"command", "generate"},           {"tokens", out.tokens},
                        {"prefill_s", out.prefill_s},      {"decode_s", out.decode_s},
                        {"memory_rank0", memory_json(*s)}, {"load_per_rank", s->load_per_rank},
                        {"metrics", metrics.to_json(true)}};
    if (printer) {
      j["prompt_tokens"] = batch;
      j["texts"] = printer->texts();
      j["eos_ids"] = eos_ids;
    }
    write_json(o.json, j);
  }
  return 0;
}

}  // namespace

Command add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand(
      "generate",
      "Decoding with the KV cache: --tokens (greedy; prints new ids) or --prompt (text in, "
      "streamed text out)");
  add_model_options(cmd, a->model, true);
  auto* tokens = cmd->add_option("--tokens", a->tokens, "Prompt token ids: sequences ';', ids ','");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "New tokens per sequence (default 16)")
      ->check(at_least(1));
  auto* prompt = cmd->add_option("--prompt", a->prompt, "Prompt text (needs a tokenizer)");
  auto* file = cmd->add_option("--prompts-file", a->prompts_file,
                               "One prompt per line; sequence i runs on rank i mod N");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Directory holding tokenizer.json (default: --model when it is a checkpoint "
                  "directory)");
  auto* chat = cmd->add_flag("--chat", a->prompt_options.chat,
                             "Wrap each prompt as a user turn of Qwen3's chat format");
  cmd->add_option("--system", a->system, "System message (with --chat)")->needs(chat);
  cmd->add_flag("--no-think", a->prompt_options.no_think,
                "Qwen3 thinking off: empty <think></think> after the generation prompt")
      ->needs(chat);
  cmd->add_option("--temperature", a->sampling.temperature,
                  "Sampling temperature; 0 (default): greedy")
      ->check(at_least(0));
  cmd->add_option("--top-k", a->sampling.top_k, "Sample among the k most likely; 0: all")
      ->check(at_least(0));
  cmd->add_option("--top-p", a->sampling.top_p, "Nucleus sampling mass in (0, 1] (default 1)")
      ->check(greater_than(0));
  cmd->add_option("--seed", a->sampling.seed,
                  "Sampling seed; the same seed gives the same text on any number of ranks");
  tokens->excludes(prompt)->excludes(file);
  prompt->excludes(file);
  cmd->parse_complete_callback([a, tokens, prompt, file] {
    if (tokens->count() + prompt->count() + file->count() == 0)
      throw CLI::ValidationError("generate needs --tokens, --prompt or --prompts-file");
    if (prompt->count() > 0 && a->prompt.empty())
      throw CLI::ValidationError("--prompt", "must not be empty");
    if (!a->system.empty()) a->prompt_options.system = a->system;
  });
  return {cmd, [a] { return run_generate(*a); }};
}

}  // namespace moe::runtime
