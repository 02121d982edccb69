// The OpenAI-compatible request and response bodies: POST /v1/chat/completions and
// /v1/completions parsed and checked field by field (a field moe-ep does not support, such as
// n > 1, logprobs or tools, is an error naming it, never ignored), and the JSON of responses,
// stream chunks and errors. Pure functions of their inputs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/io/chat_template.h"
#include "runtime/model/sampling.h"

namespace moe::runtime::serve {

// An error answered to the client: HTTP status and OpenAI's error object.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field, when there is one
  nlohmann::json to_json() const;
};

enum class Endpoint { kChat, kCompletion };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChat;
  std::string model;                    // empty: the served model
  std::vector<ChatMessage> messages;    // chat
  std::optional<bool> enable_thinking;  // chat_template_kwargs.enable_thinking
  std::string prompt_text;              // completion, text prompt
  std::vector<int32_t> prompt_ids;      // completion, prompt given as token ids
  bool prompt_is_ids = false;
  std::optional<int64_t> max_tokens;  // unset: up to the context
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses a request body; returns the error to answer instead when it is not acceptable.
std::optional<ApiError> parse_request(const std::string& body, Endpoint endpoint,
                                      CompletionRequest& out);

// The limits a parsed request's tokens are checked against.
struct PromptLimits {
  int64_t max_model_len = 0;  // prompt + new tokens
  int64_t vocab_size = 0;     // the model's
};
// Checks the prompt's length and ids and resolves max_tokens (default: the rest of the context).
std::optional<ApiError> check_prompt(const std::vector<int32_t>& prompt,
                                     const CompletionRequest& request, const PromptLimits& limits,
                                     int64_t& max_tokens);

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
  nlohmann::json to_json() const;
};

// What every response and chunk of one request shares.
struct ResponseHead {
  Endpoint endpoint = Endpoint::kChat;
  std::string id;  // "chatcmpl-N" | "cmpl-N"
  int64_t created = 0;
  std::string model;
};
nlohmann::json full_response(const ResponseHead& head, const std::string& text,
                             const std::string& finish_reason, const Usage& usage);
// A stream chunk: `text` as the delta (chat: the first chunk also carries the role), finish
// reason null unless given, usage only on the last chunk.
nlohmann::json stream_chunk(const ResponseHead& head, const std::string& text, bool first,
                            const std::string& finish_reason, const Usage* usage);
// The extra last chunk of stream_options.include_usage: no choices, the usage.
nlohmann::json usage_chunk(const ResponseHead& head, const Usage& usage);
// "data: <json>\n\n" (one server-sent event).
std::string sse_event(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// Releases generated text as it is made while holding back what could still become a stop
// string; the text ends before the first stop string it contains.
class StopText {
 public:
  explicit StopText(std::vector<std::string> stop) : stop_(std::move(stop)) {}
  // Appends `piece`; returns true when a stop string appeared (the text ends before it).
  bool append(const std::string& piece);
  // The text that can be sent now (never again returned).
  std::string take_ready();
  // Everything not yet taken (at the end of the sequence).
  std::string take_rest();
  const std::string& text() const { return text_; }

 private:
  std::vector<std::string> stop_;
  std::string text_;  // the whole text so far (up to a stop string)
  size_t taken_ = 0;
  bool stopped_ = false;
};

}  // namespace moe::runtime::serve
