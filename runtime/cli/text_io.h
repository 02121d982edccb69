// Text in and out for the commands: where the tokenizer and generation_config.json are found,
// prompts (plain or Qwen3 chat) to ids, and the printer that streams generated text in sequence
// order on rank 0 (the first unfinished sequence live, later ones as soon as it ends).
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "runtime/io/tokenizer.h"

namespace moe::runtime {

// The directory holding tokenizer.json: `tokenizer_dir` when given, else `model` when it is a
// directory (a checkpoint directory as published); throws moe::Error("input") otherwise.
std::string resolve_tokenizer_dir(const std::string& tokenizer_dir, const std::string& model);

// eos_token_id (a number or a list) of the first DIR/generation_config.json among `dirs` that
// names one; empty when none does.
std::vector<int32_t> read_eos_ids(const std::vector<std::string>& dirs);

// The lines of `path` without their line breaks ("\n" or "\r\n").
std::vector<std::string> read_lines(const std::string& path);

// "1,2,3" (spaces allowed) to ids; throws moe::Error("input") naming the bad piece.
std::vector<int32_t> parse_ids(const std::string& text);

struct PromptOptions {
  bool chat = false;                  // wrap in Qwen3's chat format with a generation prompt
  std::optional<std::string> system;  // system message (chat only)
  bool no_think = false;              // chat: empty <think></think> block, thinking off
};
// The ids of each prompt, through the chat template when asked.
std::vector<std::vector<int32_t>> encode_prompts(const Tokenizer& tokenizer,
                                                 const std::vector<std::string>& prompts,
                                                 const PromptOptions& options);

// Rank 0's view of generation: text per sequence, streamed to `out` in sequence order, one line
// break after each sequence. End-of-sequence ids are not printed, nor ids the tokenizer lacks
// (counted in num_unknown_ids).
class TextStreamPrinter {
 public:
  TextStreamPrinter(const Tokenizer& tokenizer, int64_t num_sequences, int64_t max_new,
                    std::vector<int32_t> eos_ids, std::FILE* out);
  void on_token(int64_t sequence, int32_t token);
  // Ends every sequence still open (normally none: each ends at EOS or max_new).
  void finish();
  const std::vector<std::string>& texts() const { return texts_; }
  int64_t num_unknown_ids() const { return num_unknown_ids_; }

 private:
  void emit(int64_t sequence, const std::string& text);
  void end(int64_t sequence);

  const Tokenizer& tokenizer_;
  int64_t max_new_;
  std::vector<int32_t> eos_ids_;
  std::FILE* out_;
  std::vector<StreamDecoder> decoders_;
  std::vector<std::string> texts_;    // everything decoded per sequence
  std::vector<std::string> pending_;  // decoded but not yet printed (a sequence after the cursor)
  std::vector<int64_t> counts_;
  std::vector<bool> ended_;
  int64_t cursor_ = 0;  // the sequence printing live
  int64_t num_unknown_ids_ = 0;
};

}  // namespace moe::runtime
