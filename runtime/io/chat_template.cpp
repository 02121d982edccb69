// Qwen3's chat template, line by line: each block below names the Jinja it stands for. String
// helpers mirror the Python methods the template calls (strip('\n'), split(...)[0] / [-1]).
#include "runtime/io/chat_template.h"

#include <string_view>

#include "kernels/common/check.h"

namespace moe::runtime {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

std::string_view lstrip_newlines(std::string_view s) {
  const size_t i = s.find_first_not_of('\n');
  return i == std::string_view::npos ? std::string_view{} : s.substr(i);
}
std::string_view rstrip_newlines(std::string_view s) {
  const size_t i = s.find_last_not_of('\n');
  return i == std::string_view::npos ? std::string_view{} : s.substr(0, i + 1);
}
std::string_view strip_newlines(std::string_view s) {
  return rstrip_newlines(lstrip_newlines(s));
}

// message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')
bool is_tool_response(std::string_view s) {
  return s.starts_with("<tool_response>") && s.ends_with("</tool_response>");
}

}  // namespace

std::string render_qwen3_chat(std::span<const ChatMessage> messages, const ChatOptions& options) {
  MOE_CHECK_AS("chat", !messages.empty(), "a chat needs at least one message");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    MOE_CHECK_AS(
        "chat", role == "system" || role == "user" || role == "assistant" || role == "tool",
        "message {} has role '{}'; Qwen3's chat knows system, user, assistant and tool", i, role);
  }
  const size_t n = messages.size();
  std::string out;

  // {%- if messages[0].role == 'system' %} system block {%- endif %}
  if (messages[0].role == "system")
    out += "<|im_start|>system\n" + messages[0].content + "<|im_end|>\n";

  // ns.last_query_index: the last user message that is not a tool response (else the last index)
  size_t last_query = n - 1;
  for (size_t k = n; k-- > 0;) {
    if (messages[k].role == "user" && !is_tool_response(messages[k].content)) {
      last_query = k;
      break;
    }
  }

  for (size_t i = 0; i < n; ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == n;
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      std::string_view reasoning;
      // {%- if '</think>' in content %}: reasoning between the last <think> before the first
      // </think> and that </think>; content after the last </think>
      if (content.find(kThinkClose) != std::string_view::npos) {
        std::string_view head = rstrip_newlines(content.substr(0, content.find(kThinkClose)));
        if (const size_t open = head.rfind(kThinkOpen); open != std::string_view::npos)
          head = head.substr(open + kThinkOpen.size());
        reasoning = lstrip_newlines(head);
        content = lstrip_newlines(content.substr(content.rfind(kThinkClose) + kThinkClose.size()));
      }
      // {%- if loop.index0 > ns.last_query_index %}{%- if loop.last or reasoning_content %}
      if (i > last_query && (last || !reasoning.empty())) {
        out += "<|im_start|>assistant\n<think>\n";
        out += strip_newlines(reasoning);
        out += "\n</think>\n\n";
        out += lstrip_newlines(content);
      } else {
        out += "<|im_start|>assistant\n";
        out += content;
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      // consecutive tool messages share one user turn
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (last || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    }
  }

  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (options.enable_thinking == false) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, std::span<const ChatMessage> messages,
                                 const ChatOptions& options) {
  for (const char* marker : {"<|im_start|>", "<|im_end|>"}) tokenizer.added_token_id(marker);
  if (options.enable_thinking == false) {
    tokenizer.added_token_id("<think>");
    tokenizer.added_token_id("</think>");
  }
  return tokenizer.encode(render_qwen3_chat(messages, options));
}

}  // namespace moe::runtime
