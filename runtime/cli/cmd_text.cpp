// `moe-ep tokenize` and `moe-ep detokenize`: the tokenizer alone, for scripts. tokenize prints
// one JSON array of ids per line (--text: one line; --file: one per line of the file);
// detokenize prints the text of --ids and one line break. Rank 0 prints.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>

#include "runtime/cli/commands.h"
#include "runtime/cli/text_io.h"
#include "runtime/io/tokenizer.h"

namespace moe::runtime {
namespace {

struct TokenizeArgs {
  std::string tokenizer, text, file;
};

int run_tokenize(const TokenizeArgs& a, int world_rank) {
  const Tokenizer tokenizer = Tokenizer::from_dir(a.tokenizer);
  const std::vector<std::string> lines =
      a.file.empty() ? std::vector<std::string>{a.text} : read_lines(a.file);
  if (world_rank != 0) return 0;
  for (const std::string& line : lines)
    fmt::print("[{}]\n", fmt::join(tokenizer.encode(line), ","));
  return 0;
}

struct DetokenizeArgs {
  std::string tokenizer, ids;
  bool skip_special = false;
};

int run_detokenize(const DetokenizeArgs& a, int world_rank) {
  const Tokenizer tokenizer = Tokenizer::from_dir(a.tokenizer);
  const std::string text = tokenizer.decode(parse_ids(a.ids), a.skip_special);
  if (world_rank == 0) fmt::print("{}\n", text);
  return 0;
}

}  // namespace

Command add_tokenize_command(CLI::App& app, int world_rank) {
  auto a = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand(
      "tokenize", "Text to token ids: one JSON array per line (--text, or each line of --file)");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Directory holding tokenizer.json (a checkpoint directory works as is)")
      ->required();
  auto* text = cmd->add_option("--text", a->text, "The text to tokenize");
  auto* file = cmd->add_option("--file", a->file,
                               "Tokenize each line of this file (without its line break)");
  text->excludes(file);
  cmd->parse_complete_callback([text, file] {
    if (text->count() == 0 && file->count() == 0)
      throw CLI::ValidationError("tokenize needs --text TEXT or --file F");
  });
  return {cmd, [a, world_rank] { return run_tokenize(*a, world_rank); }};
}

Command add_detokenize_command(CLI::App& app, int world_rank) {
  auto a = std::make_shared<DetokenizeArgs>();
  auto* cmd = app.add_subcommand("detokenize", "Token ids to text (printed with one line break)");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Directory holding tokenizer.json (a checkpoint directory works as is)")
      ->required();
  cmd->add_option("--ids", a->ids, "Token ids, e.g. \"1,2,3\"")->required();
  cmd->add_flag("--skip-special", a->skip_special, "Leave special tokens out of the text");
  return {cmd, [a, world_rank] { return run_detokenize(*a, world_rank); }};
}

}  // namespace moe::runtime
