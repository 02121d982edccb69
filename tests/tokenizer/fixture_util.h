// Reads the tokenizer fixtures of tests/fixtures/tokenizer: the shared test strings and, per
// tokenizer, the ids and decodes that `tokenizers` gave for each of them.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace moe::test {

inline std::string tokenizer_fixture_dir() {
  return std::string(MOE_SOURCE_DIR) + "/tests/fixtures/tokenizer";
}

struct TokenizerCase {
  std::string input;  // bytes given to encode (raw bytes where the text came from ill-formed UTF-8)
  std::string expected_decode;  // tokenizers' decode of the ids
  std::optional<std::string> expected_decode_skip_special;
  std::vector<int32_t> ids;
};

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  if (!in) return out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// Cases of one fixture (e.g. "qwen3_string_merges"); empty when the files are missing.
inline std::vector<TokenizerCase> read_tokenizer_cases(const std::string& name) {
  const auto texts = read_jsonl(tokenizer_fixture_dir() + "/texts.jsonl");
  const auto expected = read_jsonl(tokenizer_fixture_dir() + "/" + name + "/expected_ids.jsonl");
  std::vector<TokenizerCase> out;
  if (texts.size() != expected.size()) return out;
  for (size_t i = 0; i < texts.size(); ++i) {
    TokenizerCase c;
    const auto& t = texts[i];
    const auto& e = expected[i];
    c.input = t.contains("bytes_hex") ? from_hex(t["bytes_hex"]) : t["text"].get<std::string>();
    c.expected_decode = e.contains("decoded") ? e["decoded"].get<std::string>()
                        : t.contains("nfc")   ? t["nfc"].get<std::string>()
                                              : t["text"].get<std::string>();
    if (e.contains("decoded_skip_special"))
      c.expected_decode_skip_special = e["decoded_skip_special"].get<std::string>();
    c.ids = e["ids"].get<std::vector<int32_t>>();
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace moe::test
