// One served request as the HTTP handler thread and rank 0's scheduler share it, and the bounded
// admission queue between them. The scheduler turns tokens into text (incremental decoding, stop
// strings) and marks the end; the handler waits for text and sends it; either side may end the
// request early (the client went away, the server shuts down). All methods are thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/io/tokenizer.h"
#include "runtime/model/engine.h"
#include "runtime/serve/api.h"

namespace moe::runtime::serve {

using Clock = std::chrono::steady_clock;

class ServeRequest {
 public:
  ServeRequest(const Tokenizer& tokenizer, SequenceSpec spec, std::vector<std::string> stop);

  const SequenceSpec& spec() const { return spec_; }
  int64_t id() const { return spec_.id; }
  Clock::time_point arrived() const { return arrived_; }

  // ---- the scheduler's side
  void mark_started();  // admitted to the engine
  // A new token; returns true when the request is over (end of sequence, max tokens, or a stop
  // string: the engine must then drop the sequence). `on_over` runs once, when it is over, before
  // the client can see it (so what it counts is in /metrics by the time the answer arrives).
  bool on_token(int32_t token, Finish finish,
                const std::function<void(const ServeRequest&)>& on_over = {});
  // Ends the request with an error the client gets (status, message).
  void fail(int status, const std::string& message);
  bool client_gone() const;
  bool finished() const;  // answered (done or failed)

  // ---- the handler's side
  struct Update {
    std::string text;  // new text since the last update
    bool started = false, done = false;
    std::string finish_reason;  // "stop" | "length" once done without error
    int error_status = 0;       // non-zero: failed with this status
    std::string error_message;
    int64_t completion_tokens = 0;
  };
  // Waits until something new happened or `timeout` passed; returns the state and new text.
  Update wait(std::chrono::milliseconds timeout);
  void abandon();  // the client went away: the scheduler drops the sequence at the next step

  // Times for the latency histograms (set by the scheduler).
  Clock::time_point first_token_at() const { return first_token_at_; }

 private:
  const Tokenizer& tokenizer_;
  SequenceSpec spec_;
  Clock::time_point arrived_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  StreamDecoder decoder_;
  StopText text_;
  bool started_ = false, done_ = false, gone_ = false;
  std::string finish_reason_;
  int error_status_ = 0;
  std::string error_message_;
  int64_t completion_tokens_ = 0;
  uint64_t version_ = 0, seen_version_ = 0;
  Clock::time_point first_token_at_{};
};

// Requests waiting for a KV slot, in arrival order, at most `capacity`.
class RequestQueue {
 public:
  explicit RequestQueue(int64_t capacity) : capacity_(capacity) {}
  // False when the queue is full (the caller answers 429).
  bool push(std::shared_ptr<ServeRequest> request);
  std::shared_ptr<ServeRequest> pop();  // nullptr when empty
  // Waits until a request is queued or `timeout` passed.
  void wait(std::chrono::milliseconds timeout);
  void wake();
  int64_t size() const;
  // Every queued request, removed (for shutdown).
  std::vector<std::shared_ptr<ServeRequest>> drain();

 private:
  int64_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::shared_ptr<ServeRequest>> queue_;
  bool woken_ = false;
};

}  // namespace moe::runtime::serve
