// Qwen3's chat format, rendered in C++ exactly as its Jinja chat_template (tokenizer_config.json
// of Qwen/Qwen3-30B-A3B) renders under transformers' apply_chat_template, for conversations of
// system / user / assistant / tool messages with text content (no tool definitions or calls).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "runtime/io/tokenizer.h"

namespace moe::runtime {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant" | "tool"
  std::string content;
};

struct ChatOptions {
  bool add_generation_prompt = true;  // end with "<|im_start|>assistant\n"
  // Unset: the template's default (the model decides whether to think). false: the generation
  // prompt is followed by an empty "<think>\n\n</think>\n\n" block, which turns thinking off.
  std::optional<bool> enable_thinking;
};

// The prompt text for `messages` (throws moe::Error "chat" for an empty conversation or an
// unknown role). Assistant turns before the last user query lose their <think> reasoning, as
// the template drops it.
std::string render_qwen3_chat(std::span<const ChatMessage> messages, const ChatOptions& options);

// The ids of the rendered conversation. The chat format's markers (and <think> when thinking is
// off) must be added tokens of `tokenizer`, else the model would read them as plain text: throws
// moe::Error("tokenizer") naming the missing one.
std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                 const ChatOptions& options);

}  // namespace moe::runtime
