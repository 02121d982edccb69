// Request parsing (one pass over the body's keys: each known key checked for type and range,
// unsupported features and unknown keys answered 400 with the key named) and response JSON.
#include "runtime/serve/api.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace moe::runtime::serve {
namespace {

using nlohmann::json;

ApiError bad_field(const std::string& field, const std::string& what) {
  return {400, fmt::format("'{}' {}", field, what), "invalid_request_error", field};
}

std::optional<ApiError> integer_field(const json& v, const std::string& field, int64_t lo,
                                      int64_t& out) {
  if (!v.is_number_integer()) return bad_field(field, "must be an integer");
  const int64_t x =
      v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX ? INT64_MAX : v.get<int64_t>();
  if (x < lo) return bad_field(field, fmt::format("must be >= {}, got {}", lo, x));
  out = x;
  return std::nullopt;
}

std::optional<ApiError> number_field(const json& v, const std::string& field, double lo, double hi,
                                     bool lo_open, double& out) {
  if (!v.is_number()) return bad_field(field, "must be a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x > hi || x < lo || (lo_open && x == lo)) {
    return bad_field(field,
                     fmt::format("must be in {}{}, {}], got {}", lo_open ? "(" : "[", lo, hi, x));
  }
  out = x;
  return std::nullopt;
}

// A feature moe-ep does not implement: accepted only at its "off" value.
std::optional<ApiError> unsupported_unless(const json& v, const std::string& field, bool off) {
  if (v.is_null() || off) return std::nullopt;
  return bad_field(field, "is not supported by moe-ep");
}

std::optional<ApiError> parse_stop(const json& v, std::vector<std::string>& out) {
  const json list = v.is_string() ? json::array({v}) : v;
  if (!list.is_array() || list.size() > 16) {
    return bad_field("stop", "must be a string or a list of at most 16 strings");
  }
  for (const json& s : list) {
    if (!s.is_string() || s.get<std::string>().empty())
      return bad_field("stop", "must hold non-empty strings");
    out.push_back(s.get<std::string>());
  }
  return std::nullopt;
}

std::optional<ApiError> parse_content(const json& v, const std::string& field, std::string& out) {
  if (v.is_string()) {
    out = v.get<std::string>();
    return std::nullopt;
  }
  if (!v.is_array()) return bad_field(field, "must be a string or a list of text parts");
  for (size_t i = 0; i < v.size(); ++i) {
    const json& part = v[i];
    const std::string f = fmt::format("{}[{}]", field, i);
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string() || part.size() != 2) {
      return bad_field(f, "must be {\"type\": \"text\", \"text\": ...} (only text is supported)");
    }
    out += part["text"].get<std::string>();
  }
  return std::nullopt;
}

std::optional<ApiError> parse_messages(const json& v, std::vector<ChatMessage>& out) {
  if (!v.is_array()) return bad_field("messages", "must be a list of messages");
  if (v.empty()) return bad_field("messages", "must not be empty");
  for (size_t i = 0; i < v.size(); ++i) {
    const json& m = v[i];
    const std::string f = fmt::format("messages[{}]", i);
    if (!m.is_object()) return bad_field(f, "must be an object");
    ChatMessage msg;
    for (const auto& [key, value] : m.items()) {
      if (key == "role") {
        if (!value.is_string()) return bad_field(f + ".role", "must be a string");
        msg.role = value.get<std::string>();
        if (msg.role == "developer") msg.role = "system";
        if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
          return bad_field(f + ".role",
                           "must be system, user or assistant (tools are not "
                           "supported)");
        }
      } else if (key == "content") {
        if (auto e = parse_content(value, f + ".content", msg.content)) return e;
      } else if (key == "name" && value.is_string()) {
        // a participant label: OpenAI lets models use it, Qwen3's template has no place for it
        return bad_field(f + ".name", "is not supported by moe-ep");
      } else {
        return bad_field(f + "." + key, "is not a field of a message");
      }
    }
    if (msg.role.empty()) return bad_field(f + ".role", "is missing");
    if (!m.contains("content")) return bad_field(f + ".content", "is missing");
    out.push_back(std::move(msg));
  }
  return std::nullopt;
}

std::optional<ApiError> parse_prompt(const json& v, CompletionRequest& out) {
  const auto ids = [&](const json& list) -> std::optional<ApiError> {
    for (const json& t : list) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
        return bad_field("prompt", "token ids must be integers >= 0");
      out.prompt_ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
    }
    out.prompt_is_ids = true;
    return std::nullopt;
  };
  if (v.is_string()) {
    out.prompt_text = v.get<std::string>();
    return std::nullopt;
  }
  if (!v.is_array() || v.empty()) {
    return bad_field("prompt", "must be a string, a list of token ids, or a list of one of them");
  }
  if (v[0].is_number()) return ids(v);
  if (v.size() > 1) {
    return bad_field("prompt", "holds several prompts; send one request per prompt");
  }
  if (v[0].is_string()) {
    out.prompt_text = v[0].get<std::string>();
    return std::nullopt;
  }
  if (v[0].is_array() && !v[0].empty()) return ids(v[0]);
  return bad_field("prompt", "must be a string, a list of token ids, or a list of one of them");
}

// The keys both endpoints share; returns false for a key it does not know.
bool parse_common(const std::string& key, const json& value, CompletionRequest& r,
                  std::optional<ApiError>& err) {
  if (key == "model") {
    if (!value.is_string())
      err = bad_field("model", "must be a string");
    else
      r.model = value.get<std::string>();
  } else if (key == "max_tokens" || key == "max_completion_tokens") {
    int64_t n = 0;
    if (!value.is_null() && !(err = integer_field(value, key, 1, n))) r.max_tokens = n;
  } else if (key == "temperature") {
    if (!value.is_null()) err = number_field(value, key, 0, 2, false, r.sampling.temperature);
  } else if (key == "top_p") {
    if (!value.is_null()) err = number_field(value, key, 0, 1, true, r.sampling.top_p);
  } else if (key == "top_k") {
    int64_t k = 0;  // -1 and 0: every token (vLLM spells "all" -1)
    if (!value.is_null() && !(err = integer_field(value, key, -1, k)))
      r.sampling.top_k = k < 0 ? 0 : k;
  } else if (key == "seed") {
    if (!value.is_null() && !value.is_number_integer())
      err = bad_field(key, "must be an integer");
    else if (!value.is_null())
      r.sampling.seed = static_cast<uint64_t>(value.get<int64_t>());
  } else if (key == "stop") {
    if (!value.is_null()) err = parse_stop(value, r.stop);
  } else if (key == "stream") {
    if (!value.is_null() && !value.is_boolean())
      err = bad_field(key, "must be true or false");
    else
      r.stream = value.is_boolean() && value.get<bool>();
  } else if (key == "stream_options") {
    if (value.is_null()) return true;
    if (!value.is_object()) err = bad_field(key, "must be an object");
    for (const auto& [k, v] : value.items()) {
      if (k != "include_usage" || !v.is_boolean()) {
        err = bad_field(key + "." + k, "is not supported (only include_usage: true|false)");
        return true;
      }
      r.include_usage = v.get<bool>();
    }
  } else if (key == "n" || key == "best_of") {
    err = unsupported_unless(value, key, value.is_number_integer() && value.get<int64_t>() == 1);
  } else if (key == "logprobs") {
    err = unsupported_unless(value, key, value.is_boolean() && !value.get<bool>());
  } else if (key == "presence_penalty" || key == "frequency_penalty") {
    err = unsupported_unless(value, key, value.is_number() && value.get<double>() == 0);
  } else if (key == "logit_bias") {
    err = unsupported_unless(value, key, value.is_object() && value.empty());
  } else if (key == "user") {
    if (!value.is_null() && !value.is_string()) err = bad_field(key, "must be a string");
  } else {
    return false;
  }
  return true;
}

}  // namespace

nlohmann::json ApiError::to_json() const {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json() : json(param)},
            {"code", status}}}};
}

std::optional<ApiError> parse_request(const std::string& body, Endpoint endpoint,
                                      CompletionRequest& out) {
  out = CompletionRequest{};
  out.endpoint = endpoint;
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    return ApiError{400, fmt::format("the body is not valid JSON: {}", e.what()),
                    "invalid_request_error", ""};
  }
  if (!j.is_object())
    return ApiError{400, "the body must be a JSON object", "invalid_request_error", ""};
  const char* what = endpoint == Endpoint::kChat ? "messages" : "prompt";
  if (!j.contains(what)) return bad_field(what, "is missing");
  for (const auto& [key, value] : j.items()) {
    std::optional<ApiError> err;
    if (parse_common(key, value, out, err)) {
      if (err) return err;
      continue;
    }
    if (endpoint == Endpoint::kChat && key == "messages") {
      err = parse_messages(value, out.messages);
    } else if (endpoint == Endpoint::kChat && key == "chat_template_kwargs") {
      if (!value.is_object()) return bad_field(key, "must be an object");
      for (const auto& [k, v] : value.items()) {
        if (k != "enable_thinking" || !v.is_boolean())
          return bad_field(key + "." + k, "is not supported (only enable_thinking: true|false)");
        out.enable_thinking = v.get<bool>();
      }
    } else if (endpoint == Endpoint::kChat &&
               (key == "tools" || key == "tool_choice" || key == "functions" ||
                key == "function_call" || key == "parallel_tool_calls" ||
                key == "response_format" || key == "top_logprobs")) {
      err = unsupported_unless(value, key, false);
    } else if (endpoint == Endpoint::kCompletion && key == "prompt") {
      err = parse_prompt(value, out);
    } else if (endpoint == Endpoint::kCompletion && key == "echo") {
      err = unsupported_unless(value, key, value.is_boolean() && !value.get<bool>());
    } else if (endpoint == Endpoint::kCompletion && key == "suffix") {
      err = unsupported_unless(value, key, value.is_string() && value.get<std::string>().empty());
    } else {
      err = bad_field(key, "is not a field of this request");
    }
    if (err) return err;
  }
  return std::nullopt;
}

std::optional<ApiError> check_prompt(const std::vector<int32_t>& prompt,
                                     const CompletionRequest& request, const PromptLimits& limits,
                                     int64_t& max_tokens) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  const std::string field = request.endpoint == Endpoint::kChat ? "messages" : "prompt";
  if (n == 0) return bad_field(field, "encodes to no tokens");
  for (int32_t id : prompt) {
    if (id >= limits.vocab_size)
      return bad_field(field, fmt::format("has token id {}, outside the model's vocabulary of {}",
                                          id, limits.vocab_size));
  }
  if (n >= limits.max_model_len) {
    return bad_field(field, fmt::format("has {} tokens; the server's --max-model-len is {} "
                                        "(prompt and new tokens together)",
                                        n, limits.max_model_len));
  }
  max_tokens = request.max_tokens.value_or(limits.max_model_len - n);
  if (n + max_tokens > limits.max_model_len) {
    return bad_field("max_tokens",
                     fmt::format("is {}, but the prompt has {} tokens and --max-model-len is {}: "
                                 "at most {} new tokens fit",
                                 max_tokens, n, limits.max_model_len, limits.max_model_len - n));
  }
  return std::nullopt;
}

nlohmann::json Usage::to_json() const {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {

json head_json(const ResponseHead& h, const char* object) {
  return {{"id", h.id}, {"object", object}, {"created", h.created}, {"model", h.model}};
}

json finish_json(const std::string& reason) {
  return reason.empty() ? json() : json(reason);
}

}  // namespace

nlohmann::json full_response(const ResponseHead& head, const std::string& text,
                             const std::string& finish_reason, const Usage& usage) {
  const bool chat = head.endpoint == Endpoint::kChat;
  json choice = {{"index", 0}, {"finish_reason", finish_json(finish_reason)}, {"logprobs", json()}};
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  json j = head_json(head, chat ? "chat.completion" : "text_completion");
  j["choices"] = json::array({choice});
  j["usage"] = usage.to_json();
  return j;
}

nlohmann::json stream_chunk(const ResponseHead& head, const std::string& text, bool first,
                            const std::string& finish_reason, const Usage* usage) {
  const bool chat = head.endpoint == Endpoint::kChat;
  json choice = {{"index", 0}, {"finish_reason", finish_json(finish_reason)}, {"logprobs", json()}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  json j = head_json(head, chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = json::array({choice});
  j["usage"] = usage ? usage->to_json() : json();
  return j;
}

nlohmann::json usage_chunk(const ResponseHead& head, const Usage& usage) {
  json j = head_json(
      head, head.endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = json::array();
  j["usage"] = usage.to_json();
  return j;
}

std::string sse_event(const nlohmann::json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

bool StopText::append(const std::string& piece) {
  if (stopped_) return true;
  const size_t from = text_.size();
  text_ += piece;
  size_t longest = 0;
  for (const std::string& s : stop_) longest = std::max(longest, s.size());
  const size_t search_from = from >= longest ? from - longest + 1 : 0;
  size_t cut = std::string::npos;
  for (const std::string& s : stop_) {
    const size_t at = text_.find(s, search_from);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut == std::string::npos) return false;
  text_.resize(std::max(cut, taken_));
  stopped_ = true;
  return true;
}

std::string StopText::take_ready() {
  size_t hold = 0;  // the longest end of the text that begins a stop string
  if (!stopped_) {
    for (const std::string& s : stop_) {
      for (size_t n = std::min(s.size() - 1, text_.size() - taken_); n > hold; --n) {
        if (text_.compare(text_.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
      }
    }
  }
  const size_t end = text_.size() - hold;
  std::string out = text_.substr(taken_, end - taken_);
  taken_ = end;
  return out;
}

std::string StopText::take_rest() {
  std::string out = text_.substr(taken_);
  taken_ = text_.size();
  return out;
}

}  // namespace moe::runtime::serve
