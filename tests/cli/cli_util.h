// Helpers for end-to-end tests of the moe-ep executable: run a command line, capture stdout,
// stderr, exit code and wall time; temp directories; .npy comparisons; the tiny model's command
// lines and routing traces.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/io/npy.h"
#include "runtime/io/trace.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::test {

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
  double seconds = 0;
};

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("moe_ep_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

// Runs `args` through /bin/sh with a `timeout` guard so a hang fails the test instead of CTest.
inline CommandResult run(const std::string& args, int timeout_s = 120) {
  static int counter = 0;
  auto dir = temp_dir("cmd");
  auto out = dir / ("out" + std::to_string(counter));
  auto err = dir / ("err" + std::to_string(counter++));
  std::string cmd = "timeout -k 5 " + std::to_string(timeout_s) + " " + args + " >" + out.string() +
                    " 2>" + err.string() + " </dev/null";
  auto t0 = std::chrono::steady_clock::now();
  int status = std::system(cmd.c_str());
  CommandResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

inline std::string moe_ep() {
  return MOE_EP_EXE;
}

// `extra` goes to mpirun itself (e.g. "-x MOE_EP_FAULT"), before the executable.
inline std::string mpirun(int n, const std::string& extra = "") {
  return std::string(MOE_MPIRUN) + " --allow-run-as-root --oversubscribe --quiet -np " +
         std::to_string(n) + " -x OPENBLAS_NUM_THREADS=1 " + extra + " " + MOE_EP_EXE;
}

inline std::string source(const std::string& rel) {
  return std::string(MOE_SOURCE_DIR) + "/" + rel;
}

// The model every end-to-end test runs (3 MoE layers, 128 experts, top-8).
inline const std::string kTiny = source("configs/models/tiny.yaml");
// Five sequences of 9, 2, 6, 1 and 4 tokens: on 4 ranks rank 0 holds two, the others one.
inline const std::string kFiveSequences =
    "\"1,2,3,4,5,6,7,8,9;10,11;12,13,14,15,16,17;18;19,20,21,22\"";

// `<launcher> <command> --quiet --model <tiny> --tokens <tokens>`, where launcher is moe_ep() or
// mpirun(n) and command forward or generate; the caller appends the rest of the line.
inline std::string tiny_command(const std::string& launcher, const std::string& command,
                                const std::string& tokens) {
  return launcher + " " + command + " --quiet --model " + kTiny + " --tokens " + tokens;
}

// A zipf(s) routing trace of the tiny model over `num_tokens` tokens, written to
// dir/zipf.safetensors; returns its path.
inline std::string tiny_zipf_trace(const std::filesystem::path& dir, double s, int64_t num_tokens) {
  runtime::RoutingSpec spec;
  spec.kind = "zipf";
  spec.s = s;
  const std::string path = (dir / "zipf.safetensors").string();
  runtime::write_trace(
      path, runtime::generate_trace(spec, runtime::load_model_config(kTiny), num_tokens));
  return path;
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  if (!s.empty() && s.back() != '\n') ++n;
  return n;
}

// max |a - b| / max |b| over the non-NaN entries; NaN positions must agree.
inline double relative_max_diff(const runtime::NpyArray& a, const runtime::NpyArray& b) {
  EXPECT_EQ(a.shape, b.shape);
  if (a.data.size() != b.data.size()) return 1e30;
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < a.data.size(); ++i) {
    if (std::isnan(b.data[i]) || std::isnan(a.data[i])) {
      EXPECT_EQ(std::isnan(a.data[i]), std::isnan(b.data[i])) << "NaN mismatch at " << i;
      continue;
    }
    max_diff = std::max(max_diff, std::abs(double(a.data[i]) - double(b.data[i])));
    max_ref = std::max(max_ref, std::abs(double(b.data[i])));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

}  // namespace moe::test
