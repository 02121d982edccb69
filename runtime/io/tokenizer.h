// The byte-level BPE tokenizer of Qwen2/Qwen3, loaded from a HuggingFace tokenizer.json, with
// the ids the `tokenizers` library gives: added tokens split first (leftmost-longest, with their
// lstrip/rstrip/single_word/normalized flags), NFC (ICU), Split regex (PCRE2), ByteLevel, BPE.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moe::runtime {

// One entry of tokenizer.json's added_tokens.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // the match also takes the whitespace before it
  bool rstrip = false;       // ... and after it
  bool single_word = false;  // matches only between word boundaries
  bool normalized = false;   // matched in the NFC text rather than the raw input
};

class Tokenizer {
 public:
  // Reads `path` (a tokenizer.json). Every problem is one moe::Error ("tokenizer") naming `path`.
  static Tokenizer from_file(const std::string& path);
  // DIR/tokenizer.json: a checkpoint directory works as is.
  static Tokenizer from_dir(const std::string& dir);
  // The same from text in memory; `name` stands for the file in error messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& name);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // Ids of `text` (UTF-8; ill-formed sequences read as U+FFFD, one per maximal subpart, as
  // Python's errors="replace"). Safe to call from several threads.
  std::vector<int32_t> encode(std::string_view text) const;
  // Text of `ids`: the tokens' bytes, with ill-formed UTF-8 replaced by U+FFFD. Ids the tokenizer
  // does not have are left out, as `tokenizers` does (a model's embedding may be larger than its
  // tokenizer: Qwen3's ids 151,669-151,935).
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The bytes one id stands for (may be part of a UTF-8 character); throws for an unknown id.
  std::string_view token_bytes(int32_t id) const;
  bool is_special(int32_t id) const;
  bool has_id(int32_t id) const;
  // The id of a token given as in the vocabulary (byte-level form) or as an added token.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The id of an added token the caller relies on (e.g. "<|im_end|>"); throws naming the file
  // when tokenizer.json has no such added token.
  int32_t added_token_id(std::string_view content) const;
  // One more than the largest id.
  int32_t vocab_size() const;
  const std::vector<AddedToken>& added_tokens() const;
  const std::string& source() const;  // the file it came from

  struct Impl;  // opaque (runtime/io/tokenizer_impl.h); public so the loader's helpers can fill it

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Decodes ids one at a time and hands back text as soon as it is valid UTF-8: a character split
// across tokens is held back until complete. The concatenation of every push() and finish()
// equals Tokenizer::decode of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  // The text completed by this id (often empty while a character is incomplete; empty for an id
  // the tokenizer does not have).
  std::string push(int32_t id);
  // The bytes still held (an incomplete character at the end of the stream) as U+FFFD.
  std::string finish();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // at most 3 bytes: the start of a character not yet complete
};

// `text` with ill-formed UTF-8 replaced by U+FFFD (one per maximal subpart, the Unicode
// recommended practice Python and Rust follow).
std::string sanitize_utf8(std::string_view text);

}  // namespace moe::runtime
