// HttpFront: routes, JSON errors for every status (httplib's own 400/404/413/414 included), the
// thread-per-connection task queue, and the completion handler (non-streaming: wait, then one
// JSON body; streaming: wait until admitted, then one SSE event per piece of text).
#include "runtime/serve/http_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fmt/format.h>
#include <httplib.h>
#include <poll.h>
#include <sys/socket.h>

#include <condition_variable>
#include <ctime>
#include <deque>
#include <thread>

#include "kernels/common/check.h"

namespace moe::runtime::serve {
namespace {

using nlohmann::json;
constexpr auto kPoll = std::chrono::milliseconds(20);

// One thread per connection up to a cap (beyond it connections wait for a free thread), so an
// idle or slow client holds only its own thread. shutdown() waits for every thread.
class ConnectionThreads final : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(int64_t max_threads) : max_threads_(max_threads) {}
  void enqueue(std::function<void()> fn) override {
    std::lock_guard lock(mutex_);
    if (running_ >= max_threads_) {
      waiting_.push_back(std::move(fn));
      return;
    }
    ++running_;
    std::thread([this, fn = std::move(fn)]() mutable { run(std::move(fn)); }).detach();
  }
  void shutdown() override {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return running_ == 0 && waiting_.empty(); });
  }

 private:
  void run(std::function<void()> fn) {
    for (;;) {
      fn();
      std::lock_guard lock(mutex_);
      if (waiting_.empty()) {
        --running_;
        done_.notify_all();
        return;
      }
      fn = std::move(waiting_.front());
      waiting_.pop_front();
    }
  }
  int64_t max_threads_;
  std::mutex mutex_;
  std::condition_variable done_;
  int64_t running_ = 0;
  std::deque<std::function<void()>> waiting_;
};

// The socket of the connection a request came on, found by its address pair (httplib does not
// hand it to handlers); -1 when not found. The connection's thread runs the handler, so the
// socket stays open while the handler holds it.
int connection_socket(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* d = readdir(dir)) {
    const int fd = std::atoi(d->d_name);
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof(local), pl = sizeof(peer);
    if (fd <= 2 || getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) {
      continue;
    }
    const auto port_of = [](const sockaddr_storage& a) -> int {
      if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
      if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
      return -1;
    };
    if (port_of(local) == req.local_port && port_of(peer) == req.remote_port) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// Debian's httplib is compiled with a listen backlog of 5, so a burst of connections (hundreds of
// idle clients, many streams at once) would see dropped SYNs and 1 s retries. Linux lets listen()
// be called again on a listening socket to set its backlog; the socket is found like
// connection_socket() finds a connection's.
void widen_listen_backlog(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  while (dirent* d = readdir(dir)) {
    const int fd = std::atoi(d->d_name);
    int listening = 0;
    socklen_t len = sizeof(listening);
    sockaddr_storage local{};
    socklen_t ll = sizeof(local);
    if (fd <= 2 || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) {
      continue;
    }
    const int bound = local.ss_family == AF_INET
                          ? ntohs(reinterpret_cast<const sockaddr_in&>(local).sin_port)
                      : local.ss_family == AF_INET6
                          ? ntohs(reinterpret_cast<const sockaddr_in6&>(local).sin6_port)
                          : -1;
    if (bound == port) listen(fd, SOMAXCONN);
  }
  closedir(dir);
}

// True when the peer closed the connection (readable with nothing to read, or an error).
bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return true;
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

std::string error_body(int status, const std::string& message, const std::string& type) {
  ApiError e{status, message, type, ""};
  return e.to_json().dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string default_error_message(const httplib::Request& req, int status, int64_t max_body) {
  switch (status) {
    case 400:
      return "malformed HTTP request, or the request was not received in time";
    case 404:
      return fmt::format(
          "no route {} {} (routes: POST /v1/chat/completions, POST "
          "/v1/completions, GET /v1/models, GET /health, GET /metrics)",
          req.method, req.path);
    case 413:
      return fmt::format("the request body exceeds the limit of {} bytes", max_body);
    case 414:
      return "the request URI is too long";
    default:
      return fmt::format("HTTP error {}", status);
  }
}

}  // namespace

struct HttpFront::Impl {
  FrontOptions options;
  const Tokenizer& tokenizer;
  PromptLimits limits;
  RequestQueue& queue;
  ServeMetrics& metrics;
  httplib::Server server;
  std::thread listener;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> active{0};
  std::atomic<int64_t> next_id{0};
  int64_t started_at = std::time(nullptr);

  Impl(FrontOptions o, const Tokenizer& t, PromptLimits l, RequestQueue& q, ServeMetrics& m)
      : options(std::move(o)), tokenizer(t), limits(l), queue(q), metrics(m) {}

  void routes();
  bool authorized(const httplib::Request& req) const {
    return options.api_key.empty() ||
           req.get_header_value("Authorization") == "Bearer " + options.api_key;
  }
  void answer(httplib::Response& res, const std::string& endpoint, const ApiError& e) {
    res.status = e.status;
    res.set_content(e.to_json().dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
    metrics.count_request(endpoint, e.status);
  }
  void completion(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  std::optional<ApiError> admit(const httplib::Request& req, Endpoint endpoint,
                                CompletionRequest& cr, std::shared_ptr<ServeRequest>& out);
  void stream(httplib::Response& res, std::shared_ptr<ServeRequest> r, ResponseHead head,
              bool include_usage, std::string first_text);
};

std::optional<ApiError> HttpFront::Impl::admit(const httplib::Request& req, Endpoint endpoint,
                                               CompletionRequest& cr,
                                               std::shared_ptr<ServeRequest>& out) {
  if (!authorized(req))
    return ApiError{401, "missing or wrong API key (send Authorization: Bearer <key>)",
                    "authentication_error", ""};
  if (draining) return ApiError{503, "the server is shutting down", "unavailable_error", ""};
  if (auto e = parse_request(req.body, endpoint, cr)) return e;
  if (!cr.model.empty() && cr.model != options.model_name) {
    return ApiError{404,
                    fmt::format("model '{}' is not served here (this server serves '{}')", cr.model,
                                options.model_name),
                    "not_found_error", "model"};
  }
  std::vector<int32_t> prompt;
  try {
    if (endpoint == Endpoint::kChat) {
      ChatOptions chat;
      chat.enable_thinking = cr.enable_thinking;
      prompt = encode_chat(tokenizer, cr.messages, chat);
    } else {
      prompt = cr.prompt_is_ids ? cr.prompt_ids : tokenizer.encode(cr.prompt_text);
    }
  } catch (const Error& e) {  // not a conversation of the chat format, or no chat markers
    return ApiError{400, e.what(), "invalid_request_error", "messages"};
  }
  int64_t max_tokens = 0;
  if (auto e = check_prompt(prompt, cr, limits, max_tokens)) return e;
  SequenceSpec spec;
  spec.id = next_id++;
  spec.prompt = std::move(prompt);
  spec.max_new = max_tokens;
  spec.sampling = cr.sampling;
  out = std::make_shared<ServeRequest>(tokenizer, std::move(spec), cr.stop);
  if (!queue.push(out)) {
    return ApiError{429, "the server is at capacity (its queue is full); retry later",
                    "rate_limit_error", ""};
  }
  return std::nullopt;
}

void HttpFront::Impl::completion(const httplib::Request& req, httplib::Response& res,
                                 Endpoint endpoint) {
  const std::string name = endpoint == Endpoint::kChat ? "chat" : "completions";
  ++active;
  struct Leave {
    std::atomic<int64_t>& n;
    ~Leave() { --n; }
  } leave{active};
  CompletionRequest cr;
  std::shared_ptr<ServeRequest> r;
  if (auto e = admit(req, endpoint, cr, r)) return answer(res, name, *e);
  const ResponseHead head{
      endpoint, fmt::format("{}-{}", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl", r->id()),
      static_cast<int64_t>(std::time(nullptr)), options.model_name};
  // Wait (streaming: until admitted; else: until done), watching the client.
  const int fd = connection_socket(req);
  std::string text;
  ServeRequest::Update u;
  for (;;) {
    u = r->wait(kPoll);
    text += u.text;
    if (u.done || (cr.stream && u.started)) break;
    if (peer_closed(fd)) {
      r->abandon();
      metrics.count_request(name, 499);  // client closed the request (nginx's code)
      return;
    }
  }
  if (u.error_status != 0)
    return answer(res, name, {u.error_status, u.error_message, "server_error", ""});
  if (cr.stream) return stream(res, r, head, cr.include_usage, text);
  const Usage usage{static_cast<int64_t>(r->spec().prompt.size()), u.completion_tokens};
  res.set_content(full_response(head, text, u.finish_reason, usage)
                      .dump(-1, ' ', false, json::error_handler_t::replace),
                  "application/json");
  metrics.count_request(name, 200);
}

void HttpFront::Impl::stream(httplib::Response& res, std::shared_ptr<ServeRequest> r,
                             ResponseHead head, bool include_usage, std::string first_text) {
  const std::string name = head.endpoint == Endpoint::kChat ? "chat" : "completions";
  res.set_header("Cache-Control", "no-cache");
  bool first = true;
  ++active;  // until the stream ends (the releaser below)
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, r, head, include_usage, name, first, carry = std::move(first_text)](
          size_t, httplib::DataSink& sink) mutable {
        if (!sink.is_writable()) {  // the client went away
          r->abandon();
          metrics.count_request(name, 499);
          return false;
        }
        ServeRequest::Update u = r->wait(first ? std::chrono::milliseconds(0) : kPoll);
        if (first) u.text = carry + u.text;
        std::string out;
        if (first || !u.text.empty()) {
          out += sse_event(stream_chunk(head, u.text, first, "", nullptr));
          first = false;
        }
        if (u.done) {
          if (u.error_status != 0) {
            out +=
                sse_event(ApiError{u.error_status, u.error_message, "server_error", ""}.to_json());
          } else {
            const Usage usage{static_cast<int64_t>(r->spec().prompt.size()), u.completion_tokens};
            out += sse_event(stream_chunk(head, "", false, u.finish_reason, &usage));
            if (include_usage) out += sse_event(usage_chunk(head, usage));
          }
          out += kSseDone;
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {  // the client went away
          r->abandon();
          metrics.count_request(name, 499);
          return false;
        }
        if (u.done) {
          metrics.count_request(name, u.error_status != 0 ? u.error_status : 200);
          sink.done();
        }
        return true;
      },
      [this](bool) { --active; });
}

void HttpFront::Impl::routes() {
  const auto json_reply = [](httplib::Response& res, const json& j) {
    res.set_content(j.dump(), "application/json");
  };
  server.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& s) {
    completion(q, s, Endpoint::kChat);
  });
  server.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& s) {
    completion(q, s, Endpoint::kCompletion);
  });
  server.Get("/v1/models", [this, json_reply](const httplib::Request& q, httplib::Response& s) {
    if (!authorized(q)) {
      return answer(s, "models",
                    {401,
                     "missing or wrong API key (send Authorization: Bearer "
                     "<key>)",
                     "authentication_error", ""});
    }
    json_reply(s, {{"object", "list"},
                   {"data", json::array({{{"id", options.model_name},
                                          {"object", "model"},
                                          {"created", started_at},
                                          {"owned_by", "moe-ep"},
                                          {"max_model_len", limits.max_model_len}}})}});
  });
  server.Get("/health", [this, json_reply](const httplib::Request&, httplib::Response& s) {
    if (draining) s.status = 503;
    json_reply(s, {{"status", draining ? "shutting down" : "ok"}});
  });
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& s) {
    s.set_content(metrics.render(), "text/plain; version=0.0.4");
  });
  // The known paths under other methods: 405 naming the one that works.
  const std::pair<const char*, const char*> allowed[] = {{"/v1/chat/completions", "POST"},
                                                         {"/v1/completions", "POST"},
                                                         {"/v1/models", "GET"},
                                                         {"/health", "GET"},
                                                         {"/metrics", "GET"}};
  for (const auto& [path, method] : allowed) {
    const auto wrong = [this, path = std::string(path), method = std::string(method)](
                           const httplib::Request& q, httplib::Response& s) {
      s.status = 405;
      s.set_header("Allow", method);
      s.set_content(
          error_body(405, fmt::format("{} {} is not allowed; use {}", q.method, path, method),
                     "invalid_request_error"),
          "application/json");
    };
    if (std::string(method) == "POST")
      server.Get(path, wrong);
    else
      server.Post(path, wrong);
    server.Put(path, wrong);
    server.Patch(path, wrong);
    server.Delete(path, wrong);
  }
  server.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& q,
                                                                       httplib::Response& s) {
    if (!s.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    s.set_content(error_body(s.status, default_error_message(q, s.status, options.max_body_bytes),
                             s.status >= 500 ? "server_error" : "invalid_request_error"),
                  "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& s, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        s.status = 500;
        s.set_content(error_body(500, what, "server_error"), "application/json");
      });
}

HttpFront::HttpFront(FrontOptions options, const Tokenizer& tokenizer, PromptLimits limits,
                     RequestQueue& queue, ServeMetrics& metrics)
    : impl_(std::make_unique<Impl>(std::move(options), tokenizer, limits, queue, metrics)) {
  Impl& m = *impl_;
  const int64_t max_threads = m.options.max_connection_threads;
  m.server.new_task_queue = [max_threads] { return new ConnectionThreads(max_threads); };
  m.server.set_payload_max_length(static_cast<size_t>(m.options.max_body_bytes));
  m.server.set_read_timeout(m.options.read_timeout_s, 0);
  m.server.set_keep_alive_timeout(m.options.read_timeout_s);
  m.server.set_keep_alive_max_count(1000);
  m.routes();
}

HttpFront::~HttpFront() {
  stop();
}

int HttpFront::start() {
  Impl& m = *impl_;
  int port = m.options.port;
  if (port == 0) {
    port = m.server.bind_to_any_port(m.options.host);
  } else if (!m.server.bind_to_port(m.options.host, port)) {
    port = -1;
  }
  MOE_CHECK_AS("serve", port > 0,
               "cannot listen on {}:{} (address in use, or not an address of this machine)",
               m.options.host, m.options.port);
  widen_listen_backlog(port);
  m.listener = std::thread([&m] { m.server.listen_after_bind(); });
  return port;
}

void HttpFront::begin_drain() {
  impl_->draining = true;
}

int64_t HttpFront::active_handlers() const {
  return impl_->active;
}

void HttpFront::stop() {
  Impl& m = *impl_;
  if (!m.listener.joinable()) return;
  m.server.stop();
  m.listener.join();
}

}  // namespace moe::runtime::serve
