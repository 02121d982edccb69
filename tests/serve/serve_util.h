// Helpers of the serve tests: a `moe-ep serve` process (alone or under mpirun) in its own process
// group on 127.0.0.1 and a port it picks (--port 0; the port is read from its log line), killed
// with its whole group when the test ends however it ends; an HTTP client on it; the expected
// texts from `moe-ep generate`. Every wait is bounded.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/cli/cli_util.h"

namespace moe::test {

using nlohmann::json;
namespace fs = std::filesystem;

// A tiny synthetic model whose vocabulary covers the Qwen3-layout test tokenizer (4,096 BPE ids
// + 26 added tokens), so chat prompts encode to ids the model has; written to `dir`.
inline std::string chat_model_yaml(const fs::path& dir) {
  std::string yaml = read_text(source("configs/models/tiny.yaml"));
  const size_t at = yaml.find("vocab_size: 512");
  if (at != std::string::npos) yaml.replace(at, 15, "vocab_size: 4224");
  const fs::path path = dir / "chat_model.yaml";
  std::ofstream(path) << yaml;
  return path.string();
}
inline const std::string kQwenTokenizer = source("tests/fixtures/tokenizer/qwen3_string_merges");

class ServerProcess {
 public:
  // `launcher`: moe_ep() or mpirun(n); `args`: the serve flags after `serve`.
  ServerProcess(const std::string& launcher, const std::string& args, const fs::path& dir)
      : log_(dir / "server.err") {
    const std::string cmd = "exec " + launcher + " serve --port 0 " + args + " >" +
                            (dir / "server.out").string() + " 2>" + log_.string() + " </dev/null";
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(pid_, pid_);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    const std::regex line("serving .* on http://127\\.0\\.0\\.1:([0-9]+)");
    while (std::chrono::steady_clock::now() < until && port_ == 0 && running()) {
      std::smatch m;
      const std::string log = read_text(log_);
      if (std::regex_search(log, m, line)) port_ = std::stoi(m[1]);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0 && exit_code_ < 0) {
      for (pid_t p : members()) kill(p, SIGKILL);
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return read_text(log_); }
  bool running() {
    if (exit_code_ >= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return false;
    }
    return true;
  }
  // The exit code once the process ends within `timeout_s` (-1: still running).
  int wait_exit(double timeout_s) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (running() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return exit_code_;
  }
  // The server's processes: the one started (moe-ep, or mpirun) and its children (the ranks).
  std::vector<pid_t> members() const {
    std::vector<pid_t> out{pid_};
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(e.path() / "stat");
      std::string pid, comm, state;
      pid_t ppid = 0;
      stat >> pid >> comm >> state >> ppid;
      if (ppid == pid_) out.push_back(std::stoi(name));
    }
    return out;
  }
  // The pid of the moe-ep process of rank `rank` (-1: none); a server started without mpirun is
  // rank 0 itself.
  pid_t rank_pid(int rank) const {
    bool launched = false;
    for (pid_t p : members()) {
      std::ifstream env("/proc/" + std::to_string(p) + "/environ", std::ios::binary);
      const std::string s((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
      launched = launched || s.find("OMPI_COMM_WORLD_RANK=") != std::string::npos;
      if (s.find("OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + '\0') != std::string::npos)
        return p;
    }
    return !launched && rank == 0 ? pid_ : -1;
  }
  void signal(int sig) const { kill(pid_, sig); }

 private:
  fs::path log_;
  pid_t pid_ = -1;
  int port_ = 0;
  int exit_code_ = -1;
};

inline httplib::Client client(const ServerProcess& s, int timeout_s = 30) {
  httplib::Client c("127.0.0.1", s.port());
  c.set_read_timeout(timeout_s, 0);
  c.set_connection_timeout(5, 0);
  return c;
}

struct Reply {
  int status = 0;
  json body;
};
inline Reply post(const ServerProcess& s, const std::string& path, const std::string& body,
                  const httplib::Headers& headers = {}) {
  auto c = client(s);
  auto r = c.Post(path, headers, body, "application/json");
  if (!r) return {0, json()};
  return {r->status, json::parse(r->body, nullptr, false)};
}

// A raw loopback connection (a client that sends what it likes and reads or goes away when it
// likes: slow, idle and vanishing clients). Closed on destruction.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) close();
  }
  ~RawConnection() { close(); }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  bool open() const { return fd_ >= 0; }
  bool send(const std::string& s) {
    return fd_ >= 0 &&
           ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
  }
  // A POST of `body` to /v1/completions (HTTP/1.1, closed after the answer); `headers`: more
  // header lines, each ending in CRLF.
  bool post(const std::string& body, const std::string& headers = "") {
    return send(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        "application/json\r\nConnection: close\r\n" +
        headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  }
  // Reads until `needle` was received (empty: until the peer closes) or `timeout_s` passed;
  // returns everything received so far.
  const std::string& read_until(const std::string& needle, double timeout_s) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (fd_ >= 0 && (needle.empty() || got_.find(needle) == std::string::npos) &&
           std::chrono::steady_clock::now() < until) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      char buf[4096];
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      got_.append(buf, static_cast<size_t>(n));
    }
    return got_;
  }
  bool peer_closed() const { return closed_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string got_;
  bool closed_ = false;
};

// The text `moe-ep generate --prompt` makes (greedy), one per prompt, with `flags` (e.g.
// "--chat"), on `launcher`.
inline std::vector<std::string> generate_texts(const std::string& launcher,
                                               const std::string& model_flags,
                                               const std::vector<std::string>& prompts,
                                               const std::string& flags, int max_new,
                                               const fs::path& dir) {
  std::vector<std::string> texts;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const fs::path out = dir / ("gen" + std::to_string(i) + ".json");
    std::ofstream(dir / "prompt.txt") << prompts[i];
    const CommandResult r = run(launcher + " generate --quiet " + model_flags + " --prompts-file " +
                                (dir / "prompt.txt").string() + " " + flags + " --max-new-tokens " +
                                std::to_string(max_new) + " --json " + out.string());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    texts.push_back(json::parse(read_text(out))["texts"][0]);
  }
  return texts;
}

}  // namespace moe::test
