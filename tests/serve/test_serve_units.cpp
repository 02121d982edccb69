// Serving parts without HTTP: request parsing (each rejected input names its field), prompt
// limits, stop strings, the stream chunk shape; the continuous-batching engine in-process on the
// tiny model (token budget, decode first, answers equal to the static batch's); the routing
// trace's row order over several steps and sequences.
#include <gtest/gtest.h>

#include <map>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/model/engine.h"
#include "runtime/model/trace_recorder.h"
#include "runtime/serve/api.h"
#include "tests/cli/cli_util.h"

namespace moe::test {
namespace {

using runtime::serve::ApiError;
using runtime::serve::CompletionRequest;
using runtime::serve::Endpoint;

std::optional<ApiError> parse_chat(const std::string& body, CompletionRequest& r) {
  return runtime::serve::parse_request(body, Endpoint::kChat, r);
}

TEST(ServeApi, ParsesAChatRequestWithEverySupportedField) {
  CompletionRequest r;
  const auto err = parse_chat(
      R"({"model":"m","messages":[{"role":"system","content":"s"},{"role":"user",
      "content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"max_tokens":5,
      "temperature":0.5,"top_p":0.9,"top_k":3,"seed":7,"stop":["x","yz"],"stream":true,
      "stream_options":{"include_usage":true},"n":1,"logprobs":false,"user":"u",
      "chat_template_kwargs":{"enable_thinking":false}})",
      r);
  ASSERT_FALSE(err) << err->message;
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_EQ(r.sampling.temperature, 0.5);
  EXPECT_EQ(r.sampling.top_p, 0.9);
  EXPECT_EQ(r.sampling.top_k, 3);
  EXPECT_EQ(r.sampling.seed, 7u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "yz"}));
  EXPECT_TRUE(r.stream && r.include_usage);
  EXPECT_EQ(r.enable_thinking, false);
}

TEST(ServeApi, EachBadFieldIsA400NamingIt) {
  const std::string msgs = R"("messages":[{"role":"user","content":"hi"}])";
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"{not json", "", "not valid JSON"},
      {"[1,2]", "", "must be a JSON object"},
      {"{}", "messages", "'messages' is missing"},
      {R"({"messages":[]})", "messages", "must not be empty"},
      {R"({"messages":"hi"})", "messages", "must be a list"},
      {R"({"messages":[{"role":"robot","content":"x"}]})", "messages[0].role", "system, user"},
      {R"({"messages":[{"role":"user"}]})", "messages[0].content", "is missing"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})",
       "messages[0].content[0]", "only text"},
      {"{" + msgs + R"(,"max_tokens":0})", "max_tokens", "must be >= 1, got 0"},
      {"{" + msgs + R"(,"max_tokens":-3})", "max_tokens", "must be >= 1, got -3"},
      {"{" + msgs + R"(,"max_tokens":"5"})", "max_tokens", "must be an integer"},
      {"{" + msgs + R"(,"max_tokens":2.5})", "max_tokens", "must be an integer"},
      {"{" + msgs + R"(,"temperature":"hot"})", "temperature", "must be a number"},
      {"{" + msgs + R"(,"temperature":3})", "temperature", "must be in [0, 2]"},
      {"{" + msgs + R"(,"top_p":0})", "top_p", "must be in (0, 1]"},
      {"{" + msgs + R"(,"stream":"yes"})", "stream", "true or false"},
      {"{" + msgs + R"(,"stop":[""]})", "stop", "non-empty"},
      {"{" + msgs + R"(,"n":2})", "n", "not supported"},
      {"{" + msgs + R"(,"logprobs":true})", "logprobs", "not supported"},
      {"{" + msgs + R"(,"tools":[{"type":"function"}]})", "tools", "not supported"},
      {"{" + msgs + R"(,"response_format":{"type":"json_object"}})", "response_format",
       "not supported"},
      {"{" + msgs + R"(,"presence_penalty":0.5})", "presence_penalty", "not supported"},
      {"{" + msgs + R"(,"temprature":1})", "temprature", "not a field of this request"},
  };
  for (const auto& [body, param, message] : cases) {
    CompletionRequest r;
    const auto err = parse_chat(body, r);
    ASSERT_TRUE(err) << body;
    EXPECT_EQ(err->status, 400) << body;
    EXPECT_EQ(err->param, param) << body;
    EXPECT_NE(err->message.find(message), std::string::npos) << body << " -> " << err->message;
    EXPECT_EQ(err->to_json()["error"]["code"], 400);
  }
}

TEST(ServeApi, CompletionPromptsAndTheirLimits) {
  CompletionRequest r;
  const auto parse = [&](const std::string& body) {
    return runtime::serve::parse_request(body, Endpoint::kCompletion, r);
  };
  EXPECT_FALSE(parse(R"({"prompt":"hello"})"));
  EXPECT_EQ(r.prompt_text, "hello");
  EXPECT_FALSE(parse(R"({"prompt":[5,6,7]})"));
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_FALSE(parse(R"({"prompt":[[8,9]]})"));
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{8, 9}));
  auto err = parse(R"({"prompt":["a","b"]})");
  ASSERT_TRUE(err);
  EXPECT_NE(err->message.find("one request per prompt"), std::string::npos);
  err = parse(R"({"prompt":"x","echo":true})");
  ASSERT_TRUE(err);
  EXPECT_EQ(err->param, "echo");
  err = parse(R"({"prompt":"x","messages":[]})");
  ASSERT_TRUE(err);
  EXPECT_EQ(err->param, "messages");

  const runtime::serve::PromptLimits limits{10, 100};
  int64_t max_tokens = 0;
  ASSERT_FALSE(parse(R"({"prompt":[1,2,3]})"));
  EXPECT_FALSE(runtime::serve::check_prompt({1, 2, 3}, r, limits, max_tokens));
  EXPECT_EQ(max_tokens, 7);  // the rest of the context
  err = runtime::serve::check_prompt(std::vector<int32_t>(10, 1), r, limits, max_tokens);
  ASSERT_TRUE(err);
  EXPECT_NE(err->message.find("has 10 tokens; the server's --max-model-len is 10"),
            std::string::npos)
      << err->message;
  ASSERT_FALSE(parse(R"({"prompt":[1,2,3],"max_tokens":8})"));
  err = runtime::serve::check_prompt({1, 2, 3}, r, limits, max_tokens);
  ASSERT_TRUE(err);
  EXPECT_EQ(err->param, "max_tokens");
  EXPECT_NE(err->message.find("at most 7 new tokens fit"), std::string::npos) << err->message;
  err = runtime::serve::check_prompt({1, 200}, r, limits, max_tokens);
  ASSERT_TRUE(err);
  EXPECT_NE(err->message.find("token id 200, outside the model's vocabulary of 100"),
            std::string::npos);
}

TEST(ServeApi, StopStringsEndTheTextAndPartialOnesAreHeldBack) {
  runtime::serve::StopText t({"END", "xy"});
  EXPECT_FALSE(t.append("abc E"));
  EXPECT_EQ(t.take_ready(), "abc ");  // "E" may start "END"
  EXPECT_FALSE(t.append("Nx"));
  EXPECT_EQ(t.take_ready(), "EN");  // "ENx" cannot become "END"; "x" may start "xy"
  EXPECT_FALSE(t.append("z"));
  EXPECT_EQ(t.take_ready(), "xz");
  EXPECT_FALSE(t.append("..EN"));
  EXPECT_EQ(t.take_ready(), "..");  // "EN" may start "END"
  EXPECT_TRUE(t.append("D!"));
  EXPECT_EQ(t.take_rest(), "");  // the text ends before "END"
  EXPECT_EQ(t.text(), "abc ENxz..");
  runtime::serve::StopText u({"END"});
  EXPECT_FALSE(u.append("ok E"));
  EXPECT_TRUE(u.append("ND more"));
  EXPECT_EQ(u.take_ready() + u.take_rest(), "ok ");
}

TEST(ServeApi, StreamChunksFollowOpenAi) {
  const runtime::serve::ResponseHead head{Endpoint::kChat, "chatcmpl-3", 42, "tiny"};
  const auto first = runtime::serve::stream_chunk(head, "", true, "", nullptr);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const runtime::serve::Usage usage{5, 3};
  const auto last = runtime::serve::stream_chunk(head, "", false, "length", &usage);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["usage"]["total_tokens"], 8);
  EXPECT_EQ(runtime::serve::sse_event({{"a", 1}}), "data: {\"a\":1}\n\n");
  const auto full = runtime::serve::full_response({Endpoint::kCompletion, "cmpl-1", 42, "tiny"},
                                                  "text", "stop", usage);
  EXPECT_EQ(full["object"], "text_completion");
  EXPECT_EQ(full["choices"][0]["text"], "text");
}

// The tiny model in this process, one rank.
struct TinyEngine {
  runtime::ModelConfig config = runtime::load_model_config(kTiny);
  std::unique_ptr<parallel::Communicator> comm = parallel::make_one_rank_communicator();
  std::unique_ptr<runtime::WeightSource> weights =
      runtime::make_synthetic_weights(config, config.seed);
  std::unique_ptr<kernels::Backend> backend = kernels::make_backend("cpu", 0);
  parallel::Placement placement =
      parallel::Placement::build({}, config.moe_layers(), static_cast<int>(config.num_experts), 1);
  runtime::Model model;
  TinyEngine(int64_t slots, int64_t max_len)
      : model(config, placement, *comm, *backend, *weights, slots, max_len) {}
};

std::vector<int32_t> prompt_of(int64_t len, int32_t seed) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < len; ++i) p.push_back(static_cast<int32_t>((seed * 131 + i * 17) % 512));
  return p;
}

// Sequences arriving at different steps, prompts longer than the budget: every step stays within
// the budget, running sequences decode in every step while a long prompt is chunked, and each
// sequence gets the tokens the static batch gives it alone.
TEST(ServeEngine, ContinuousBatchingKeepsTheBudgetAndTheAnswers) {
  TinyEngine t(4, 128);
  runtime::Engine engine(t.model, *t.comm, {12, false});
  const std::vector<int64_t> lengths = {5, 30, 3, 17, 9};
  const std::vector<int64_t> arrive_at = {0, 1, 1, 4, 6};
  std::map<int64_t, std::vector<int32_t>> got;
  size_t submitted = 0;
  int64_t step = 0;
  std::vector<int64_t> decoding_before;
  while (submitted < lengths.size() || !engine.idle()) {
    while (submitted < lengths.size() && arrive_at[submitted] <= step) {
      engine.submit(
          {static_cast<int64_t>(submitted), prompt_of(lengths[submitted], submitted), 6, {}, 0});
      ++submitted;
    }
    std::vector<int64_t> decoded;
    const runtime::StepStats st = engine.step([&](int64_t id, int32_t tok, runtime::Finish) {
      got[id].push_back(tok);
      decoded.push_back(id);
    });
    EXPECT_LE(st.num_tokens, 12) << "step " << step;
    // a sequence that decoded in the previous step and is not finished decodes again
    for (int64_t id : decoding_before) {
      if (got[id].size() < 6) {
        EXPECT_NE(std::find(decoded.begin(), decoded.end(), id), decoded.end())
            << "sequence " << id << " skipped at step " << step;
      }
    }
    decoding_before = decoded;
    ASSERT_LT(++step, 200);
  }
  EXPECT_TRUE(engine.step(nullptr, true).stop);
  for (size_t i = 0; i < lengths.size(); ++i) {
    runtime::Engine alone(t.model, *t.comm);
    const auto out = alone.generate({prompt_of(lengths[i], static_cast<int32_t>(i))}, 6);
    EXPECT_EQ(got[static_cast<int64_t>(i)], out.tokens[0]) << "sequence " << i;
  }
}

// Rows are ordered by step, then sequence, then position, whatever order a rank routed them in
// and however requests start and end at different steps (a chunked prompt's rows sit in the
// steps that computed them).
TEST(ServeTrace, RowsAreStepMajorOverSeveralStepsAndSequences) {
  const runtime::ModelConfig config = runtime::load_model_config(kTiny);
  runtime::TraceRecorder rec(config);
  auto comm = parallel::make_one_rank_communicator();
  const int k = static_cast<int>(config.num_experts_per_tok);
  // (step, sequence, position) in the order routed: step 0 = sequence 3's chunk then 1's prompt;
  // step 1 = sequence 1 decoding, 3's second chunk, 0 starting; step 2 = 0 and 3 decoding.
  const std::vector<std::array<int64_t, 3>> routed = {{0, 3, 0}, {0, 3, 1}, {0, 1, 0}, {0, 1, 1},
                                                      {0, 1, 2}, {1, 1, 3}, {1, 3, 2}, {1, 3, 3},
                                                      {1, 0, 0}, {2, 3, 4}, {2, 0, 1}};
  std::map<int64_t, std::vector<runtime::TokenId>> by_step;
  for (const auto& r : routed) by_step[r[0]].push_back({r[1], r[2]});
  for (const auto& [step, tokens] : by_step) {
    for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
      if (!config.layer_is_moe(l)) continue;
      std::vector<int32_t> ids;
      std::vector<float> weights;
      for (const auto& tok : tokens) {
        for (int j = 0; j < k; ++j) {  // ids encode the token, so the order can be read back
          ids.push_back(static_cast<int32_t>((tok.sequence * 10 + tok.position + j) % 128));
          weights.push_back(static_cast<float>(step));
        }
      }
      rec.route(step, static_cast<int>(l), tokens, ids, weights);
    }
  }
  const runtime::RoutingTrace t = rec.gather(*comm);
  const std::vector<std::array<int64_t, 3>> want = {{0, 1, 0}, {0, 1, 1}, {0, 1, 2}, {0, 3, 0},
                                                    {0, 3, 1}, {1, 0, 0}, {1, 1, 3}, {1, 3, 2},
                                                    {1, 3, 3}, {2, 0, 1}, {2, 3, 4}};
  ASSERT_EQ(t.num_tokens(0), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < t.layers.size(); ++i) {
    for (size_t row = 0; row < want.size(); ++row) {
      const auto& w = want[row];
      EXPECT_EQ(t.ids[i][row * k], (w[1] * 10 + w[2]) % 128) << "row " << row;
      EXPECT_EQ(t.weights[i][row * k], static_cast<float>(w[0])) << "row " << row;
    }
  }
}

}  // namespace
}  // namespace moe::test
