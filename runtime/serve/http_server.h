// The HTTP front on rank 0 (cpp-httplib): OpenAI's POST /v1/chat/completions and /v1/completions
// (JSON or server-sent events), GET /v1/models, /health and /metrics. Each connection has its own
// thread (so idle or slow clients hold only their own), every error is a JSON body with its
// status, and a handler notices a client that went away and abandons its request. Requests go to
// the RequestQueue; rank 0's loop (serve_loop.h) runs them.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/io/tokenizer.h"
#include "runtime/serve/api.h"
#include "runtime/serve/prometheus.h"
#include "runtime/serve/request.h"

namespace moe::runtime::serve {

struct FrontOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                       // 0: any free port (start() returns it)
  std::string api_key;                   // non-empty: /v1/* needs "Authorization: Bearer <key>"
  std::string model_name;                // what /v1/models lists and requests may name
  int64_t max_body_bytes = 1 << 20;      // larger bodies get 413
  int read_timeout_s = 10;               // a request not received by then gets 400; idle keep-alive
  int64_t max_connection_threads = 512;  // connections beyond wait for a thread
};

class HttpFront {
 public:
  HttpFront(FrontOptions options, const Tokenizer& tokenizer, PromptLimits limits,
            RequestQueue& queue, ServeMetrics& metrics);
  ~HttpFront();
  HttpFront(const HttpFront&) = delete;
  HttpFront& operator=(const HttpFront&) = delete;

  // Binds and starts listening on its own thread; returns the port. Throws moe::Error("serve")
  // when the address cannot be bound.
  int start();
  // From now on new requests get 503 (the server is shutting down); running ones go on.
  void begin_drain();
  // Requests whose handler has not returned yet.
  int64_t active_handlers() const;
  // Stops listening and waits for every connection's thread.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::runtime::serve
