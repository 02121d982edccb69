// ServeRequest and RequestQueue: a mutex and a condition variable each; every change bumps a
// version so a waiting handler wakes once per change.
#include "runtime/serve/request.h"

namespace moe::runtime::serve {

ServeRequest::ServeRequest(const Tokenizer& tokenizer, SequenceSpec spec,
                           std::vector<std::string> stop)
    : tokenizer_(tokenizer),
      spec_(std::move(spec)),
      arrived_(Clock::now()),
      decoder_(tokenizer, /*skip_special_tokens=*/true),
      text_(std::move(stop)) {}

void ServeRequest::mark_started() {
  std::lock_guard lock(mutex_);
  started_ = true;
  ++version_;
  changed_.notify_all();
}

bool ServeRequest::on_token(int32_t token, Finish finish,
                            const std::function<void(const ServeRequest&)>& on_over) {
  std::lock_guard lock(mutex_);
  if (done_) return true;
  if (completion_tokens_++ == 0) first_token_at_ = Clock::now();
  const bool eos = finish == Finish::kEos;
  bool stopped = false;
  if (!eos) stopped = text_.append(decoder_.push(token));
  if (!stopped && finish != Finish::kRunning) stopped = text_.append(decoder_.finish());
  if (stopped || finish != Finish::kRunning) {
    done_ = true;
    finish_reason_ = (stopped || eos) ? "stop" : "length";
    if (on_over) on_over(*this);
  }
  ++version_;
  changed_.notify_all();
  return done_;
}

void ServeRequest::fail(int status, const std::string& message) {
  std::lock_guard lock(mutex_);
  if (done_) return;
  done_ = true;
  error_status_ = status;
  error_message_ = message;
  ++version_;
  changed_.notify_all();
}

bool ServeRequest::client_gone() const {
  std::lock_guard lock(mutex_);
  return gone_;
}

bool ServeRequest::finished() const {
  std::lock_guard lock(mutex_);
  return done_;
}

void ServeRequest::abandon() {
  std::lock_guard lock(mutex_);
  gone_ = true;
}

ServeRequest::Update ServeRequest::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return version_ != seen_version_; });
  seen_version_ = version_;
  Update u;
  u.started = started_;
  u.done = done_;
  u.text = done_ ? text_.take_rest() : text_.take_ready();
  u.finish_reason = finish_reason_;
  u.error_status = error_status_;
  u.error_message = error_message_;
  u.completion_tokens = completion_tokens_;
  return u;
}

bool RequestQueue::push(std::shared_ptr<ServeRequest> request) {
  std::lock_guard lock(mutex_);
  if (static_cast<int64_t>(queue_.size()) >= capacity_) return false;
  queue_.push_back(std::move(request));
  changed_.notify_all();
  return true;
}

std::shared_ptr<ServeRequest> RequestQueue::pop() {
  std::lock_guard lock(mutex_);
  if (queue_.empty()) return nullptr;
  auto r = std::move(queue_.front());
  queue_.pop_front();
  return r;
}

void RequestQueue::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [&] { return !queue_.empty() || woken_; });
  woken_ = false;
}

void RequestQueue::wake() {
  std::lock_guard lock(mutex_);
  woken_ = true;
  changed_.notify_all();
}

int64_t RequestQueue::size() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(queue_.size());
}

std::vector<std::shared_ptr<ServeRequest>> RequestQueue::drain() {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<ServeRequest>> out(queue_.begin(), queue_.end());
  queue_.clear();
  return out;
}

}  // namespace moe::runtime::serve
