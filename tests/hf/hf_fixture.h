// The HuggingFace fixtures (tests/fixtures/hf, made by transformers itself with
// tests/fixtures/make_fixtures.py) and their FP8 versions: prompts, the reference greedy
// continuations and, per prompt, its float32 logits in logits_<i>.npy.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_util.h"

namespace moe::test {

// The FP8 ones (`*_fp8`, tests/fixtures/make_fp8_fixtures.py) are the bf16 ones' weights quantised
// as the published FP8 checkpoints store them, one per expert layout; their reference is the
// float64 forward of the dequantised weights.
inline const std::vector<std::string> kFixtures = {
    "moe128", "dense_mix", "tied", "fused", "fused_t", "moe128_fp8", "fused_fp8", "fused_t_fp8"};

struct Fixture {
  std::string dir;
  std::vector<std::vector<int>> prompts;
  std::vector<std::vector<int>> greedy;
  std::string tokens_arg;  // "a,b;c,d"
};

inline Fixture load_fixture(const std::string& name) {
  Fixture f;
  f.dir = source("tests/fixtures/hf/" + name);
  auto prompts = nlohmann::json::parse(read_text(f.dir + "/prompts.json"));
  auto expected = nlohmann::json::parse(read_text(f.dir + "/expected.json"));
  f.prompts = prompts["prompts"].get<std::vector<std::vector<int>>>();
  f.greedy = expected["greedy"].get<std::vector<std::vector<int>>>();
  for (size_t i = 0; i < f.prompts.size(); ++i) {
    if (i) f.tokens_arg += ";";
    for (size_t t = 0; t < f.prompts[i].size(); ++t) {
      f.tokens_arg += (t ? "," : "") + std::to_string(f.prompts[i][t]);
    }
  }
  return f;
}

// Rows [0, len) of sequence i of a forward output [sequences, max_len, vocab].
inline runtime::NpyArray sequence_rows(const runtime::NpyArray& all, size_t i, int64_t len) {
  const int64_t L = all.shape[1], V = all.shape[2];
  runtime::NpyArray rows{{len, V}, {}};
  rows.data.assign(all.data.begin() + static_cast<int64_t>(i) * L * V,
                   all.data.begin() + (static_cast<int64_t>(i) * L + len) * V);
  return rows;
}

}  // namespace moe::test
