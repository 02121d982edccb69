// The C++ Qwen3 chat template against transformers' apply_chat_template on Qwen3's own template
// text, for every conversation of tests/fixtures/tokenizer/chat_qwen3.json.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/io/chat_template.h"
#include "tests/common/expect_error.h"
#include "tests/tokenizer/fixture_util.h"

namespace moe::runtime {
namespace {

TEST(ChatTemplate, EqualsTransformersOnEveryFixtureConversation) {
  std::ifstream in(test::tokenizer_fixture_dir() + "/chat_qwen3.json");
  ASSERT_TRUE(in) << "missing chat_qwen3.json";
  const nlohmann::json fixture = nlohmann::json::parse(in);
  const auto& convs = fixture["conversations"];
  ASSERT_GE(convs.size(), 300u);
  size_t num_wrong = 0;
  size_t num_thinking_off = 0;
  for (size_t i = 0; i < convs.size(); ++i) {
    const auto& c = convs[i];
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    ChatOptions options;
    options.add_generation_prompt = c["add_generation_prompt"];
    if (!c["enable_thinking"].is_null()) options.enable_thinking = c["enable_thinking"].get<bool>();
    num_thinking_off += options.enable_thinking == false && options.add_generation_prompt;
    const std::string got = render_qwen3_chat(messages, options);
    if (got != c["text"].get<std::string>() && ++num_wrong <= 5)
      ADD_FAILURE() << "conversation " << i << "\n--- got:\n"
                    << got << "\n--- expected:\n"
                    << c["text"].get<std::string>();
  }
  EXPECT_EQ(num_wrong, 0u) << "of " << convs.size();
  EXPECT_GT(num_thinking_off, 50u);
}

TEST(ChatTemplate, ThinkingOffAddsAnEmptyThinkBlock) {
  const std::vector<ChatMessage> messages = {{"system", "Be brief."}, {"user", "Hi"}};
  ChatOptions off;
  off.enable_thinking = false;
  EXPECT_EQ(render_qwen3_chat(messages, off),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(render_qwen3_chat(messages, ChatOptions{}),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplate, RejectsWhatTheFormatCannotSay) {
  std::string what = test::expect_error("chat", [] { render_qwen3_chat({}, ChatOptions{}); });
  EXPECT_NE(what.find("a chat needs at least one message"), std::string::npos) << what;
  const std::vector<ChatMessage> bad = {{"user", "a"}, {"narrator", "b"}};
  what = test::expect_error("chat", [&] { render_qwen3_chat(bad, ChatOptions{}); });
  EXPECT_NE(what.find("message 1 has role 'narrator'"), std::string::npos) << what;
}

}  // namespace
}  // namespace moe::runtime
