// Internal to the tokenizer (runtime/io/tokenizer*.cpp include it, nothing else): Tokenizer::Impl,
// what a loaded tokenizer.json becomes (vocabulary, merges, compiled pre-tokenizer regexes,
// added tokens, id tables), and the UTF-8 and Unicode helpers the loader and the encoder share.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/umachine.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/io/tokenizer.h"

namespace moe::runtime {
namespace tokenizer_detail {

// ---- UTF-8 and character classes (tokenizer_text.cpp) --------------------------------------

inline bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}
// Appends `bytes` with every ill-formed subsequence replaced by U+FFFD (maximal subparts).
// Returns the number of leading bytes consumed; with `hold_incomplete` a character cut off by
// the end of `bytes` is left unconsumed (streaming), else it becomes U+FFFD too.
size_t append_utf8_lossy(std::string& out, std::string_view bytes, bool hold_incomplete);
bool is_valid_utf8(std::string_view bytes);
void append_code_point(std::string& out, UChar32 c);

// A word character as single_word sees it: Unicode \w (UTS #18: Alphabetic, marks, decimal
// digits, connector punctuation, Join_Control), the class tokenizers takes from regex-syntax.
bool is_word_char(UChar32 c);
// First and last character of valid UTF-8 `s`.
UChar32 first_char(std::string_view s);
UChar32 last_char(std::string_view s);
// Byte offset where the whitespace (Rust's char::is_whitespace) at the end of `s` starts
// (s.size() when none), and the length in bytes of the whitespace at its start.
size_t whitespace_start_at_end(std::string_view s);
size_t whitespace_len_at_start(std::string_view s);

// NFC of valid UTF-8 `s` (ICU); `source` names the file in errors.
std::string nfc_normalize(std::string_view s, const std::string& source);
// Code points below U+0300 are NFC and never compose with what precedes them: text whose bytes
// are all below 0xCC (the lead byte of U+0300) is unchanged by NFC.
inline bool may_change_under_nfc(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0xCC) return true;
  return false;
}

// ---- Byte-level alphabet (GPT-2's bytes_to_unicode) ----------------------------------------

struct ByteLevelAlphabet {
  std::array<UChar32, 256> byte_to_char{};
  std::array<int16_t, 512> char_to_byte{};  // -1 where the code point is not in the alphabet

  ByteLevelAlphabet();
  // The bytes a byte-level string stands for; nullopt when a character is outside the alphabet.
  std::optional<std::string> to_bytes(std::string_view s) const;
};
const ByteLevelAlphabet& alphabet();

// ---- Hash tables ---------------------------------------------------------------------------

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;
// Words (pre-tokenized pieces) remembered with their ids.
using WordCache = StringMap<std::vector<int32_t>>;

// (left id, right id) -> (rank, merged id), open addressing on a power-of-two table.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t merged = 0;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    slots_.assign(cap, Entry{});
    mask_ = cap - 1;
  }
  // Later entries for the same pair overwrite earlier ones, as tokenizers' HashMap collect does.
  void insert(int32_t a, int32_t b, int32_t rank, int32_t merged) {
    const uint64_t key = pack(a, b);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty || slots_[i].key == key) {
        slots_[i] = Entry{key, rank, merged};
        return;
      }
    }
  }
  const Entry* find(int32_t a, int32_t b) const {
    const uint64_t key = pack(a, b);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i];
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t pack(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  size_t slot(uint64_t key) const { return ((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  std::vector<Entry> slots_;
  size_t mask_ = 0;
};

// ---- PCRE2 RAII ----------------------------------------------------------------------------

struct CodeDeleter {
  void operator()(pcre2_code* p) const { pcre2_code_free(p); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* p) const { pcre2_match_data_free(p); }
};
struct MatchContextDeleter {
  void operator()(pcre2_match_context* p) const { pcre2_match_context_free(p); }
};
struct JitStackDeleter {
  void operator()(pcre2_jit_stack* p) const { pcre2_jit_stack_free(p); }
};
using Code = std::unique_ptr<pcre2_code, CodeDeleter>;

// Match state for one encode call (PCRE2 match data is not shareable between threads).
struct Scratch {
  std::vector<std::unique_ptr<pcre2_match_data, MatchDataDeleter>> match_data;  // one per regex
  std::unique_ptr<pcre2_match_context, MatchContextDeleter> context;
  std::unique_ptr<pcre2_jit_stack, JitStackDeleter> jit_stack;
};

// ---- Added-token matching ------------------------------------------------------------------

// Leftmost-longest search over a set of added tokens (what tokenizers' Aho-Corasick does).
struct AddedMatcher {
  struct Pattern {
    std::string text;
    size_t token;  // index into Impl::added
  };
  std::array<std::vector<Pattern>, 256> by_first_byte;  // longest first
  std::array<bool, 256> is_first{};
  bool empty = true;

  void add(std::string text, size_t token) {
    if (text.empty()) return;
    const auto b = static_cast<uint8_t>(text[0]);
    is_first[b] = true;
    by_first_byte[b].push_back({std::move(text), token});
    empty = false;
  }
  void finish() {
    for (auto& v : by_first_byte)
      std::stable_sort(v.begin(), v.end(), [](const Pattern& a, const Pattern& b) {
        return a.text.size() > b.text.size();
      });
  }
  // First match at or after `from`: {start, pattern} or {npos, nullptr}.
  std::pair<size_t, const Pattern*> find(std::string_view s, size_t from) const {
    for (size_t i = from; i < s.size(); ++i) {
      const auto b = static_cast<uint8_t>(s[i]);
      if (!is_first[b]) continue;
      for (const Pattern& p : by_first_byte[b])
        if (s.size() - i >= p.text.size() && s.compare(i, p.text.size(), p.text) == 0)
          return {i, &p};
    }
    return {std::string_view::npos, nullptr};
  }
};

}  // namespace tokenizer_detail

// ---- The tokenizer -------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string source;

  // model (BPE)
  tokenizer_detail::StringMap<int32_t> vocab;  // byte-level token string -> id
  tokenizer_detail::StringMap<int32_t>
      vocab_by_bytes;                  // raw bytes -> id (ignore_merges, whole-word lookups)
  std::array<int32_t, 256> byte_id{};  // id of each single byte, -1 when the vocab lacks it
  tokenizer_detail::MergeTable merges;
  bool ignore_merges = false;
  int32_t unk_id = -1;
  bool fuse_unk = false;

  // pipeline
  bool nfc = false;
  std::vector<tokenizer_detail::Code>
      splits;  // Split pre-tokenizers, applied in order (behavior Isolated)
  std::vector<AddedToken> added;
  tokenizer_detail::AddedMatcher raw_added;         // normalized=false: matched in the raw input
  tokenizer_detail::AddedMatcher normalized_added;  // normalized=true: matched in NFC text

  // decoding
  enum class Kind : uint8_t { kNone, kModel, kAdded, kSpecial };
  std::vector<std::string> id_bytes;
  size_t id_limit = 0;  // ids at or above this are refused (see load_model)
  std::vector<Kind> id_kind;

  // cache + scratch of the thread that holds `mutex` (others encode without a cache)
  mutable std::mutex mutex;
  mutable tokenizer_detail::WordCache cache;
  mutable tokenizer_detail::Scratch scratch;

  tokenizer_detail::Scratch make_scratch() const;
  void encode_into(std::string_view text, tokenizer_detail::Scratch& scratch,
                   tokenizer_detail::WordCache* cache, std::vector<int32_t>& out) const;
  template <class OnText, class OnToken>
  void split_added(const tokenizer_detail::AddedMatcher& matcher, std::string_view text,
                   OnText&& on_text, OnToken&& on_token) const;
  template <class Emit>
  void split_regex(size_t level, std::string_view text, tokenizer_detail::Scratch& scratch,
                   Emit&& emit) const;
  void bpe(std::string_view word, tokenizer_detail::WordCache* cache,
           std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  [[noreturn]] void fail_id(int32_t id) const;
};

}  // namespace moe::runtime
