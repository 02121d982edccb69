// `moe-ep serve` on one process over loopback HTTP: every bad input of issue 20's list gets its
// status and a message naming what is wrong, and the server answers a good request after each;
// slow, idle and vanishing clients hold only their own connection; a full queue answers 429;
// SIGTERM drains and exits 0. Every wait is bounded.
#include <future>

#include "tests/serve/serve_util.h"

namespace moe::test {
namespace {

const std::string kKey = "sk-test";
const httplib::Headers kAuth = {{"Authorization", "Bearer " + kKey}};
const std::string kLongStream = R"({"prompt":"Hello there","max_tokens":2000,"stream":true})";
const std::string kGoodChat =
    R"({"messages":[{"role":"user","content":"Hello there"}],"max_tokens":4})";

// The tiny chat model with a small context, a small body limit, one KV slot and a queue of one.
std::string small_server_args(const fs::path& dir, const std::string& extra = "") {
  return "--model " + chat_model_yaml(dir) + " --tokenizer " + kQwenTokenizer + " --api-key " +
         kKey + " --max-model-len 2048 --max-body-bytes 32768 --read-timeout-s 2 --max-seqs 1 " +
         "--max-batch-tokens 64 --max-queue 1 " + extra;
}

void expect_good_request_answered(const ServerProcess& s, const std::string& after) {
  const Reply r = post(s, "/v1/chat/completions", kGoodChat, kAuth);
  EXPECT_EQ(r.status, 200) << "after " << after << ": " << r.body.dump();
  if (r.status == 200) {
    EXPECT_EQ(r.body["usage"]["completion_tokens"], 4) << "after " << after;
  }
}

std::string ids_prompt(int64_t n) {
  std::string s = R"({"prompt":[)";
  for (int64_t i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(10 + i % 100);
  return s + R"(],"max_tokens":1})";
}

// The value of the /metrics line that starts with `line_start` (-1: none).
int64_t metric(const ServerProcess& s, const std::string& line_start) {
  auto c = client(s);
  const auto r = c.Get("/metrics");
  if (!r) return -1;
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(line_start + " ", 0) == 0) return std::stoll(line.substr(line_start.size() + 1));
  }
  return -1;
}

struct BadInput {
  std::string what, method, path, body;
  httplib::Headers headers;
  int status;
  std::string message;
};

TEST(ServeHttp, EveryBadInputGetsItsStatusAndMessageAndTheServerServesAfter) {
  const fs::path dir = temp_dir("serve_bad");
  ServerProcess s(moe_ep(), small_server_args(dir), dir);
  ASSERT_GT(s.port(), 0) << s.log();
  const std::string msgs = R"("messages":[{"role":"user","content":"hi"}])";
  const std::vector<BadInput> cases = {
      {"malformed JSON", "POST", "/v1/chat/completions", "{\"messages\": [", kAuth, 400,
       "not valid JSON"},
      {"a wrong type", "POST", "/v1/chat/completions", "{" + msgs + R"(,"max_tokens":"5"})", kAuth,
       400, "'max_tokens' must be an integer"},
      {"an unknown field", "POST", "/v1/chat/completions", "{" + msgs + R"(,"temprature":1})",
       kAuth, 400, "not a field of this request"},
      {"an unsupported field", "POST", "/v1/chat/completions", "{" + msgs + R"(,"n":2})", kAuth,
       400, "'n'"},
      {"empty messages", "POST", "/v1/chat/completions", R"({"messages":[]})", kAuth, 400,
       "must not be empty"},
      {"max_tokens 0", "POST", "/v1/completions", R"({"prompt":"hi","max_tokens":0})", kAuth, 400,
       "must be >= 1, got 0"},
      {"max_tokens above the model length", "POST", "/v1/completions",
       R"({"prompt":"hi","max_tokens":5000})", kAuth, 400, "new tokens fit"},
      {"a prompt longer than --max-model-len", "POST", "/v1/completions", ids_prompt(2100), kAuth,
       400, "--max-model-len is 2048"},
      {"a body over the limit", "POST", "/v1/completions",
       R"({"prompt":")" + std::string(40000, 'a') + "\"}", kAuth, 413,
       "exceeds the limit of 32768"},
      {"an unknown route", "POST", "/v1/embeddings", "{}", kAuth, 404,
       "no route POST /v1/embeddings"},
      {"a wrong method", "GET", "/v1/chat/completions", "", kAuth, 405,
       "GET /v1/chat/completions is not allowed; use POST"},
      {"a missing API key",
       "POST",
       "/v1/chat/completions",
       kGoodChat,
       {},
       401,
       "missing or wrong API key"},
      {"a wrong API key",
       "POST",
       "/v1/chat/completions",
       kGoodChat,
       {{"Authorization", "Bearer nope"}},
       401,
       "missing or wrong API key"},
      {"an unknown model", "POST", "/v1/chat/completions", "{" + msgs + R"(,"model":"gpt-9"})",
       kAuth, 404, "model 'gpt-9' is not served here"},
  };
  for (const BadInput& c : cases) {
    auto cl = client(s);
    const httplib::Result r = c.method == "GET"
                                  ? cl.Get(c.path, c.headers)
                                  : cl.Post(c.path, c.headers, c.body, "application/json");
    ASSERT_TRUE(r) << c.what << ": no answer";
    EXPECT_EQ(r->status, c.status) << c.what << ": " << r->body;
    const json body = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(body.is_object() && body.contains("error")) << c.what << ": " << r->body;
    EXPECT_EQ(body["error"]["code"], c.status) << c.what;
    const std::string message = body["error"]["message"];
    EXPECT_NE(message.find(c.message), std::string::npos) << c.what << ": " << message;
    expect_good_request_answered(s, c.what);
  }
  // /metrics counted them: the two API-key failures, every good request and its latency.
  EXPECT_EQ(metric(s, R"(moe_ep_requests_total{endpoint="chat",status="401"})"), 2);
  const auto good = static_cast<int64_t>(cases.size());
  EXPECT_EQ(metric(s, R"(moe_ep_requests_total{endpoint="chat",status="200"})"), good);
  EXPECT_EQ(metric(s, "moe_ep_time_to_first_token_seconds_count"), good);
  EXPECT_EQ(metric(s, "moe_ep_generation_tokens_total"), 4 * good);
  EXPECT_TRUE(s.running()) << s.log();
}

// 200 idle connections and a client that sends half a request and stalls: a good request is
// answered meanwhile; once --read-timeout-s passes the stalled client gets 400 (or is closed),
// and the server still answers.
TEST(ServeHttp, SlowAndIdleClientsHoldOnlyTheirOwnConnection) {
  const fs::path dir = temp_dir("serve_idle");
  ServerProcess s(moe_ep(), small_server_args(dir), dir);
  ASSERT_GT(s.port(), 0) << s.log();
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 200; ++i) {
    idle.push_back(std::make_unique<RawConnection>(s.port()));
    ASSERT_TRUE(idle.back()->open()) << "connection " << i;
  }
  RawConnection slow(s.port());
  ASSERT_TRUE(
      slow.send("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Length: 500\r\n\r\n{\"messages\":"));
  expect_good_request_answered(s, "200 idle connections and a stalled one");
  const std::string& got = slow.read_until("malformed HTTP request", 15);
  EXPECT_TRUE(got.find("HTTP/1.1 400") == 0 || (got.empty() && slow.peer_closed()))
      << "the stalled client was never let go: " << got;
  idle.clear();
  expect_good_request_answered(s, "the stalled client timed out");
  EXPECT_TRUE(s.running()) << s.log();
}

// One KV slot and a queue of one: a long stream runs, the next request waits, a third gets 429;
// the stream's client goes away, its slot is freed and the waiting request is answered.
TEST(ServeHttp, AFullQueueAnswers429AndAVanishedClientFreesItsSlot) {
  const fs::path dir = temp_dir("serve_full");
  ServerProcess s(moe_ep(), small_server_args(dir), dir);
  ASSERT_GT(s.port(), 0) << s.log();
  auto stream = std::make_unique<RawConnection>(s.port());
  ASSERT_TRUE(stream->post(kLongStream, "Authorization: Bearer " + kKey + "\r\n"));
  ASSERT_NE(stream->read_until("\"text_completion\"", 30).find("text_completion"),
            std::string::npos);
  auto waiting = std::async(std::launch::async,
                            [&] { return post(s, "/v1/chat/completions", kGoodChat, kAuth); });
  for (int i = 0; i < 500 && metric(s, "moe_ep_queue_length") != 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(metric(s, "moe_ep_queue_length"), 1) << "the second request never queued";
  const Reply full = post(s, "/v1/chat/completions", kGoodChat, kAuth);
  EXPECT_EQ(full.status, 429) << full.body.dump();
  EXPECT_NE(full.body.dump().find("queue is full"), std::string::npos) << full.body.dump();
  stream.reset();  // the client goes away mid-stream
  ASSERT_EQ(waiting.wait_for(std::chrono::seconds(30)), std::future_status::ready)
      << "the waiting request never got the freed slot";
  const Reply r = waiting.get();
  EXPECT_EQ(r.status, 200) << r.body.dump();
  for (int i = 0; i < 100 && metric(s, "moe_ep_running_sequences") != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(metric(s, "moe_ep_running_sequences"), 0);
  EXPECT_EQ(metric(s, "moe_ep_requests_total{endpoint=\"completions\",status=\"499\"}"), 1);
  expect_good_request_answered(s, "the vanished client");
}

// SIGTERM while a long stream runs: new requests get 503, the stream ends with [DONE] (finished,
// or cancelled with a 503 event once the grace period passes) and the process exits 0.
TEST(ServeHttp, SigtermDrainsWithinTheGracePeriodAndExitsZero) {
  const fs::path dir = temp_dir("serve_term");
  ServerProcess s(moe_ep(), small_server_args(dir, "--grace-s 1"), dir);
  ASSERT_GT(s.port(), 0) << s.log();
  RawConnection stream(s.port());
  ASSERT_TRUE(stream.post(kLongStream, "Authorization: Bearer " + kKey + "\r\n"));
  ASSERT_NE(stream.read_until("text_completion", 30).find("text_completion"), std::string::npos);
  s.signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const Reply late = post(s, "/v1/chat/completions", kGoodChat, kAuth);
  if (late.status != 0) {  // 0: the listener had already closed
    EXPECT_EQ(late.status, 503) << late.body.dump();
    EXPECT_NE(late.body.dump().find("shutting down"), std::string::npos) << late.body.dump();
  }
  const std::string& got = stream.read_until("data: [DONE]", 30);
  ASSERT_NE(got.find("data: [DONE]"), std::string::npos) << got.substr(got.size() - 500);
  const bool finished = got.find("\"finish_reason\":\"length\"") != std::string::npos;
  const bool cancelled = got.find("shut down before the request finished") != std::string::npos;
  EXPECT_TRUE(finished || cancelled) << got.substr(got.size() - 500);
  EXPECT_EQ(s.wait_exit(30), 0) << s.log();
  EXPECT_NE(s.log().find("moe-ep: stopped after"), std::string::npos) << s.log();
}

}  // namespace
}  // namespace moe::test
