// Byte-level BPE as the `tokenizers` library runs it for Qwen2/Qwen3's tokenizer.json. Order of
// work per encode: sanitize UTF-8 -> split out raw-matched added tokens -> NFC per remaining
// segment -> split out normalized added tokens -> Split regex(es) -> bytes -> BPE (word cache).
#include "runtime/io/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "kernels/common/check.h"

namespace moe::runtime {
namespace {

using json = nlohmann::json;

// Ids above this are refused: real vocabularies hold ~150k; a larger id is a broken file and
// would make the id tables huge.
constexpr int64_t kMaxId = (1 << 24) - 1;
// Words (pre-tokenized pieces) remembered with their ids; like tokenizers, the cache stops
// growing when full and long pieces are not cached.
constexpr size_t kCacheCapacity = 1 << 16;
constexpr size_t kCacheMaxWordBytes = 256;
// Words up to this many bytes merge with a linear scan; longer ones with a priority queue.
constexpr size_t kLinearMergeMax = 48;
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The pre-tokenizer regex of GPT-2, used by a ByteLevel pre-tokenizer with use_regex=true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// `\s` as Oniguruma (the regex engine of tokenizers) reads it: the White_Space property.
// PCRE2 10.42's \s also takes U+180E, so patterns are rewritten to this explicit class.
constexpr std::string_view kWhiteSpaceClass =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// ---- UTF-8 ---------------------------------------------------------------------------------

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

// Appends `bytes` with every ill-formed subsequence replaced by U+FFFD (maximal subparts).
// Returns the number of leading bytes consumed; with `hold_incomplete` a character cut off by
// the end of `bytes` is left unconsumed (streaming), else it becomes U+FFFD too.
size_t append_utf8_lossy(std::string& out, std::string_view bytes, bool hold_incomplete) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const int64_t n = static_cast<int64_t>(bytes.size());
  int64_t i = 0;
  int64_t run_start = 0;  // start of valid bytes not yet appended
  while (i < n) {
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    const int64_t start = i;
    UChar32 c = 0;
    U8_NEXT(s, i, n, c);
    if (c >= 0) continue;
    out.append(bytes.data() + run_start, start - run_start);
    // a lead byte whose sequence the end cut short (a bad byte after it would have stopped
    // U8_NEXT before the end)
    if (hold_incomplete && i == n && U8_IS_LEAD(s[start])) return static_cast<size_t>(start);
    out.append(kReplacement);
    run_start = i;
  }
  out.append(bytes.data() + run_start, n - run_start);
  return bytes.size();
}

bool is_valid_utf8(std::string_view bytes) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const int64_t n = static_cast<int64_t>(bytes.size());
  for (int64_t i = 0; i < n;) {
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    UChar32 c = 0;
    U8_NEXT(s, i, n, c);
    if (c < 0) return false;
  }
  return true;
}

void append_code_point(std::string& out, UChar32 c) {
  char buf[4];
  int32_t len = 0;
  U8_APPEND_UNSAFE(buf, len, c);
  out.append(buf, len);
}

// Rust's char::is_whitespace (the White_Space property), as tokenizers' lstrip/rstrip use it.
bool is_white_space(UChar32 c) {
  return u_hasBinaryProperty(c, UCHAR_WHITE_SPACE);
}
// A word character as single_word sees it: Unicode \w (UTS #18: Alphabetic, marks, decimal
// digits, connector punctuation, Join_Control), the class tokenizers takes from regex-syntax.
bool is_word_char(UChar32 c) {
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL))
    return true;
  const int8_t t = u_charType(c);
  return t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK || t == U_ENCLOSING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION;
}

UChar32 first_char(std::string_view s) {
  int64_t i = 0;
  UChar32 c = 0;
  U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, static_cast<int64_t>(s.size()), c);
  return c;
}
// The character ending at byte `end` of valid UTF-8 `s`; its start goes to `start`.
UChar32 char_before(std::string_view s, size_t end, size_t& start) {
  start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  int64_t i = static_cast<int64_t>(start);
  UChar32 c = 0;
  U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, static_cast<int64_t>(end), c);
  return c;
}
UChar32 last_char(std::string_view s) {
  size_t start = 0;
  return char_before(s, s.size(), start);
}

// Byte offset where the whitespace at the end of `s` starts (s.size() when none).
size_t whitespace_start_at_end(std::string_view s) {
  size_t index = s.size();
  while (index > 0) {
    size_t start = 0;
    if (!is_white_space(char_before(s, index, start))) break;
    index = start;
  }
  return index;
}
// Length in bytes of the whitespace at the start of `s`.
size_t whitespace_len_at_start(std::string_view s) {
  int64_t i = 0;
  const int64_t n = static_cast<int64_t>(s.size());
  size_t index = 0;
  while (i < n) {
    UChar32 c = 0;
    U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, n, c);
    if (!is_white_space(c)) break;
    index = static_cast<size_t>(i);
  }
  return index;
}

// ---- Byte-level alphabet (GPT-2's bytes_to_unicode) ----------------------------------------

struct ByteLevelAlphabet {
  std::array<UChar32, 256> byte_to_char{};
  std::array<int16_t, 512> char_to_byte{};  // -1 where the code point is not in the alphabet

  ByteLevelAlphabet() {
    char_to_byte.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      byte_to_char[b] = printable ? b : next++;
      char_to_byte[byte_to_char[b]] = static_cast<int16_t>(b);
    }
  }
  // The bytes a byte-level string stands for; nullopt when a character is outside the alphabet.
  std::optional<std::string> to_bytes(std::string_view s) const {
    std::string out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const int64_t n = static_cast<int64_t>(s.size());
    for (int64_t i = 0; i < n;) {
      UChar32 c = 0;
      U8_NEXT(p, i, n, c);
      if (c < 0 || c >= static_cast<UChar32>(char_to_byte.size()) || char_to_byte[c] < 0)
        return std::nullopt;
      out.push_back(static_cast<char>(char_to_byte[c]));
    }
    return out;
  }
};

const ByteLevelAlphabet& alphabet() {
  static const ByteLevelAlphabet table;
  return table;
}

// ---- Hash tables ---------------------------------------------------------------------------

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

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

}  // namespace

// ---- The tokenizer -------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string source;

  // model (BPE)
  StringMap<int32_t> vocab;            // byte-level token string -> id
  StringMap<int32_t> vocab_by_bytes;   // raw bytes -> id (ignore_merges, whole-word lookups)
  std::array<int32_t, 256> byte_id{};  // id of each single byte, -1 when the vocab lacks it
  MergeTable merges;
  bool ignore_merges = false;
  int32_t unk_id = -1;
  bool fuse_unk = false;

  // pipeline
  bool nfc = false;
  std::vector<Code> splits;  // Split pre-tokenizers, applied in order (behavior Isolated)
  std::vector<AddedToken> added;
  AddedMatcher raw_added;         // normalized=false: matched in the raw input
  AddedMatcher normalized_added;  // normalized=true: matched in NFC text

  // decoding
  enum class Kind : uint8_t { kNone, kModel, kAdded, kSpecial };
  std::vector<std::string> id_bytes;
  size_t id_limit = 0;  // ids at or above this are refused (see load_model)
  std::vector<Kind> id_kind;

  // cache + scratch of the thread that holds `mutex` (others encode without a cache)
  mutable std::mutex mutex;
  mutable StringMap<std::vector<int32_t>> cache;
  mutable Scratch scratch;

  Scratch make_scratch() const;
  void encode_into(std::string_view text, Scratch& scratch, StringMap<std::vector<int32_t>>* cache,
                   std::vector<int32_t>& out) const;
  template <class OnText, class OnToken>
  void split_added(const AddedMatcher& matcher, std::string_view text, OnText&& on_text,
                   OnToken&& on_token) const;
  template <class Emit>
  void split_regex(size_t level, std::string_view text, Scratch& scratch, Emit&& emit) const;
  void bpe(std::string_view word, StringMap<std::vector<int32_t>>* cache,
           std::vector<int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  [[noreturn]] void fail_id(int32_t id) const;
};

namespace {

// ---- Loading -------------------------------------------------------------------------------

// Typed access to the parsed file; every problem is one moe::Error naming the file and the key.
class Loader {
 public:
  explicit Loader(const std::string& file) : file_(file) {}

  template <class... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) const {
    MOE_THROW("tokenizer", "{}: {}", file_, fmt::format(f, std::forward<Args>(args)...));
  }
  const json* find(const json& obj, const char* key) const {
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  const json& object(const json& obj, const char* key, const char* where) const {
    const json* v = find(obj, key);
    if (!v) fail("{} has no '{}'", where, key);
    if (!v->is_object()) fail("{}.{} is not an object", where, key);
    return *v;
  }
  bool boolean(const json& obj, const char* key, bool fallback, const char* where) const {
    const json* v = find(obj, key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail("{}.{} is not true/false", where, key);
    return v->get<bool>();
  }
  std::string string(const json& obj, const char* key, const char* where) const {
    const json* v = find(obj, key);
    if (!v) fail("{} has no '{}'", where, key);
    if (!v->is_string()) fail("{}.{} is not a string", where, key);
    return v->get<std::string>();
  }
  std::string type(const json& obj, const char* where) const {
    if (!obj.is_object()) fail("{} is not an object", where);
    return string(obj, "type", where);
  }
  int32_t id(const json& v, const std::string& what) const {
    if (!v.is_number_integer()) fail("{}: id is not an integer", what);
    const int64_t id =
        v.is_number_unsigned()
            ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), uint64_t{kMaxId} + 1))
            : v.get<int64_t>();
    if (id < 0 || id > kMaxId) fail("{}: id {} is outside [0, {}]", what, id, kMaxId);
    return static_cast<int32_t>(id);
  }

 private:
  const std::string& file_;
};

// Rewrites `\s` / `\S` to the White_Space class (see kWhiteSpaceClass), inside and outside
// character classes; everything else is passed through for PCRE2.
std::string to_pcre2_pattern(std::string_view pattern, const Loader& loader) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceClass) : fmt::format("[{}]", kWhiteSpaceClass);
      } else if (e == 'S') {
        if (in_class) loader.fail("pre_tokenizer regex uses \\S inside [...], not supported");
        out += fmt::format("[^{}]", kWhiteSpaceClass);
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // a ']' right after '[' or '[^' is a literal
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

Code compile_regex(std::string_view pattern, bool literal, const Loader& loader) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  const std::string translated = literal ? std::string(pattern) : to_pcre2_pattern(pattern, loader);
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
  Code code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                          options, &error, &offset, nullptr));
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    loader.fail("pre_tokenizer regex does not compile at offset {}: {}", offset,
                reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);  // without JIT PCRE2 interprets: still right
  return code;
}

void load_model(const json& root, const Loader& loader, Tokenizer::Impl& t) {
  const json& model = loader.object(root, "model", "tokenizer.json");
  const json* type = loader.find(model, "type");
  if (type) {
    if (!type->is_string()) loader.fail("model.type is not a string");
    if (type->get<std::string>() != "BPE")
      loader.fail("unknown model type '{}' (only BPE, as Qwen2/Qwen3 use, is supported)",
                  type->get<std::string>());
  }
  const json& vocab = loader.object(model, "vocab", "model");
  const json* merges = loader.find(model, "merges");
  if (!merges || !merges->is_array()) loader.fail("model.merges is missing or not an array");
  if (const json* d = loader.find(model, "dropout");
      d && !(d->is_number() && d->get<double>() == 0.0))
    loader.fail("model.dropout is not supported (BPE dropout is for training)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = loader.find(model, key);
    if (v && !(v->is_string() && v->get<std::string>().empty()))
      loader.fail("model.{} is not supported (byte-level BPE has none)", key);
  }
  if (loader.boolean(model, "byte_fallback", false, "model"))
    loader.fail("model.byte_fallback is not supported (byte-level BPE has every byte)");
  t.ignore_merges = loader.boolean(model, "ignore_merges", false, "model");
  t.fuse_unk = loader.boolean(model, "fuse_unk", false, "model");

  const ByteLevelAlphabet& abc = alphabet();
  t.vocab.reserve(vocab.size());
  // ids are dense in every real file; a few entries with huge ids would only allocate
  const json* added = loader.find(root, "added_tokens");
  t.id_limit = 2 * (vocab.size() + (added && added->is_array() ? added->size() : 0)) + 1024;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = loader.id(it.value(), fmt::format("model.vocab['{}']", it.key()));
    if (static_cast<size_t>(id) >= t.id_limit)
      loader.fail("model.vocab['{}']: id {} is far beyond the {} tokens listed", it.key(), id,
                  t.id_limit / 2);
    if (static_cast<size_t>(id) >= t.id_bytes.size()) {
      t.id_bytes.resize(static_cast<size_t>(id) + 1);
      t.id_kind.resize(static_cast<size_t>(id) + 1, Tokenizer::Impl::Kind::kNone);
    }
    if (t.id_kind[id] != Tokenizer::Impl::Kind::kNone)
      loader.fail("model.vocab gives id {} to two tokens (one is '{}')", id, it.key());
    t.id_kind[id] = Tokenizer::Impl::Kind::kModel;
    std::optional<std::string> bytes = abc.to_bytes(it.key());
    // a token outside the byte-level alphabet decodes to its own UTF-8, as tokenizers does
    t.id_bytes[id] = bytes ? *bytes : it.key();
    if (bytes) t.vocab_by_bytes.emplace(*bytes, id);
    t.vocab.emplace(it.key(), id);
  }
  t.byte_id.fill(-1);
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_code_point(ch, abc.byte_to_char[b]);
    if (auto it = t.vocab.find(ch); it != t.vocab.end()) t.byte_id[b] = it->second;
  }
  if (const json* unk = loader.find(model, "unk_token")) {
    if (!unk->is_string()) loader.fail("model.unk_token is not a string");
    auto it = t.vocab.find(unk->get<std::string>());
    if (it == t.vocab.end())
      loader.fail("model.unk_token '{}' is not in model.vocab", unk->get<std::string>());
    t.unk_id = it->second;
  }

  t.merges.reserve(merges->size());
  std::string a, b;
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    const json& m = (*merges)[rank];
    if (m.is_string()) {  // "a b"
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        loader.fail("model.merges[{}] '{}' is not two tokens separated by one space", rank, s);
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // [a, b]
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      loader.fail("model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]", rank);
    }
    auto lookup = [&](const std::string& token) {
      auto it = t.vocab.find(token);
      if (it == t.vocab.end())
        loader.fail("model.merges[{}] ('{} {}') needs '{}', which is not in model.vocab", rank, a,
                    b, token);
      return it->second;
    };
    if (rank > static_cast<size_t>(INT32_MAX)) loader.fail("model.merges is too long");
    const int32_t left = lookup(a);
    const int32_t right = lookup(b);
    t.merges.insert(left, right, static_cast<int32_t>(rank), lookup(a + b));
  }
}

void load_normalizer(const json& root, const Loader& loader, Tokenizer::Impl& t) {
  const json* n = loader.find(root, "normalizer");
  if (!n) return;
  const std::string type = loader.type(*n, "normalizer");
  if (type == "NFC") {
    t.nfc = true;
    return;
  }
  if (type == "Sequence") {
    const json* list = loader.find(*n, "normalizers");
    if (!list || !list->is_array()) loader.fail("normalizer.normalizers is not an array");
    for (const json& item : *list) {
      const std::string inner = loader.type(item, "normalizer.normalizers[]");
      if (inner != "NFC") loader.fail("unsupported normalizer '{}' (only NFC)", inner);
      t.nfc = true;
    }
    return;
  }
  loader.fail("unsupported normalizer '{}' (only NFC, as Qwen2/Qwen3 use)", type);
}

void add_split(const json& split, const Loader& loader, Tokenizer::Impl& t) {
  const std::string behavior = loader.string(split, "behavior", "Split pre_tokenizer");
  if (behavior != "Isolated")
    loader.fail("Split pre_tokenizer behavior '{}' is not supported (only Isolated)", behavior);
  if (loader.boolean(split, "invert", false, "Split pre_tokenizer"))
    loader.fail("Split pre_tokenizer with invert=true is not supported");
  const json& pattern = loader.object(split, "pattern", "Split pre_tokenizer");
  if (const json* re = loader.find(pattern, "Regex"); re && re->is_string())
    t.splits.push_back(compile_regex(re->get<std::string>(), false, loader));
  else if (const json* lit = loader.find(pattern, "String"); lit && lit->is_string())
    t.splits.push_back(compile_regex(lit->get<std::string>(), true, loader));
  else
    loader.fail(
        "Split pre_tokenizer pattern is neither {{\"Regex\": ...}} nor {{\"String\": ...}}");
}

void add_byte_level(const json& bl, const Loader& loader, Tokenizer::Impl& t) {
  if (loader.boolean(bl, "add_prefix_space", false, "ByteLevel pre_tokenizer"))
    loader.fail("ByteLevel pre_tokenizer with add_prefix_space=true is not supported");
  if (loader.boolean(bl, "use_regex", true, "ByteLevel pre_tokenizer"))
    t.splits.push_back(compile_regex(kGpt2Pattern, false, loader));
}

void load_pre_tokenizer(const json& root, const Loader& loader, Tokenizer::Impl& t) {
  const json* p = loader.find(root, "pre_tokenizer");
  if (!p) loader.fail("has no pre_tokenizer (expected ByteLevel, alone or after Split)");
  const std::string type = loader.type(*p, "pre_tokenizer");
  if (type == "ByteLevel") return add_byte_level(*p, loader, t);
  if (type != "Sequence")
    loader.fail("unsupported pre_tokenizer '{}' (expected Sequence[Split, ByteLevel])", type);
  const json* list = loader.find(*p, "pretokenizers");
  if (!list || !list->is_array() || list->empty())
    loader.fail("pre_tokenizer.pretokenizers is not a non-empty array");
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string inner = loader.type((*list)[i], "pre_tokenizer.pretokenizers[]");
    const bool last = i + 1 == list->size();
    if (inner == "Split" && !last) {
      add_split((*list)[i], loader, t);
    } else if (inner == "ByteLevel" && last) {
      add_byte_level((*list)[i], loader, t);
    } else {
      loader.fail("unsupported pre_tokenizer '{}' at position {} (expected Split..., ByteLevel)",
                  inner, i);
    }
  }
}

void check_decoder_and_post_processor(const json& root, const Loader& loader) {
  const json* d = loader.find(root, "decoder");
  if (!d) loader.fail("has no decoder (expected ByteLevel)");
  if (const std::string type = loader.type(*d, "decoder"); type != "ByteLevel")
    loader.fail("unsupported decoder '{}' (only ByteLevel)", type);
  // ByteLevel adds no tokens and only moves offsets; anything else would add ids we do not
  if (const json* pp = loader.find(root, "post_processor")) {
    if (const std::string type = loader.type(*pp, "post_processor"); type != "ByteLevel")
      loader.fail("unsupported post_processor '{}' (only ByteLevel)", type);
  }
}

void load_added_tokens(const json& root, const Loader& loader, Tokenizer::Impl& t) {
  const json* list = loader.find(root, "added_tokens");
  if (!list) return;
  if (!list->is_array()) loader.fail("added_tokens is not an array");
  StringMap<size_t> by_content;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& e = (*list)[i];
    const std::string where = fmt::format("added_tokens[{}]", i);
    if (!e.is_object()) loader.fail("{} is not an object", where);
    AddedToken tok;
    tok.content = loader.string(e, "content", where.c_str());
    if (tok.content.empty()) loader.fail("{} has empty content", where);
    if (!is_valid_utf8(tok.content)) loader.fail("{} content is not valid UTF-8", where);
    const json* id = loader.find(e, "id");
    if (!id) loader.fail("{} ('{}') has no id", where, tok.content);
    tok.id = loader.id(*id, fmt::format("{} ('{}')", where, tok.content));
    tok.special = loader.boolean(e, "special", false, where.c_str());
    tok.lstrip = loader.boolean(e, "lstrip", false, where.c_str());
    tok.rstrip = loader.boolean(e, "rstrip", false, where.c_str());
    tok.single_word = loader.boolean(e, "single_word", false, where.c_str());
    tok.normalized = loader.boolean(e, "normalized", !tok.special, where.c_str());
    if (!by_content.emplace(tok.content, t.added.size()).second)
      loader.fail("{}: '{}' is listed twice", where, tok.content);
    if (auto it = t.vocab.find(tok.content); it != t.vocab.end() && it->second != tok.id)
      loader.fail("{}: '{}' has id {} but model.vocab gives it id {}", where, tok.content, tok.id,
                  it->second);
    if (static_cast<size_t>(tok.id) >= t.id_limit)
      loader.fail("{}: id {} of '{}' is far beyond the {} tokens listed", where, tok.id,
                  tok.content, t.id_limit / 2);
    if (static_cast<size_t>(tok.id) >= t.id_bytes.size()) {
      t.id_bytes.resize(static_cast<size_t>(tok.id) + 1);
      t.id_kind.resize(static_cast<size_t>(tok.id) + 1, Tokenizer::Impl::Kind::kNone);
    }
    using Kind = Tokenizer::Impl::Kind;
    const Kind prev = t.id_kind[tok.id];
    if (prev == Kind::kAdded || prev == Kind::kSpecial)
      loader.fail("{}: id {} of '{}' is already taken by another added token", where, tok.id,
                  tok.content);
    if (prev == Kind::kModel && t.vocab.find(tok.content) == t.vocab.end())
      loader.fail("{}: id {} of '{}' belongs to another model.vocab token", where, tok.id,
                  tok.content);
    t.id_kind[tok.id] = tok.special ? Kind::kSpecial : Kind::kAdded;
    std::optional<std::string> bytes = alphabet().to_bytes(tok.content);
    t.id_bytes[tok.id] = bytes ? *bytes : tok.content;
    t.added.push_back(std::move(tok));
  }
}

std::string nfc_normalize(std::string_view s, const std::string& source) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
  MOE_CHECK_AS("tokenizer", U_SUCCESS(status), "{}: ICU NFC normalizer unavailable: {}", source,
               u_errorName(status));
  const icu::StringPiece piece(s.data(), static_cast<int32_t>(s.size()));
  if (nfc->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(s.size()));
  nfc->normalizeUTF8(0, piece, sink, nullptr, status);
  MOE_CHECK_AS("tokenizer", U_SUCCESS(status), "{}: NFC normalization failed: {}", source,
               u_errorName(status));
  return out;
}

// Code points below U+0300 are NFC and never compose with what precedes them: text whose bytes
// are all below 0xCC (the lead byte of U+0300) is unchanged by NFC.
bool may_change_under_nfc(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0xCC) return true;
  return false;
}

}  // namespace

// ---- Encoding ------------------------------------------------------------------------------

Scratch Tokenizer::Impl::make_scratch() const {
  Scratch s;
  for (const Code& code : splits)
    s.match_data.emplace_back(pcre2_match_data_create_from_pattern(code.get(), nullptr));
  s.context.reset(pcre2_match_context_create(nullptr));
  s.jit_stack.reset(pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr));
  MOE_CHECK_AS("tokenizer", s.context && s.jit_stack, "{}: out of memory for regex matching",
               source);
  pcre2_jit_stack_assign(s.context.get(), nullptr, s.jit_stack.get());
  for (const auto& md : s.match_data)
    MOE_CHECK_AS("tokenizer", md != nullptr, "{}: out of memory for regex matching", source);
  return s;
}

// tokenizers' AddedVocabulary::find_matches: leftmost-longest matches; a single_word match
// without word boundaries is dropped (and its text not searched again); lstrip/rstrip widen the
// match over adjacent whitespace.
template <class OnText, class OnToken>
void Tokenizer::Impl::split_added(const AddedMatcher& matcher, std::string_view text,
                                  OnText&& on_text, OnToken&& on_token) const {
  if (matcher.empty) {
    if (!text.empty()) on_text(text);
    return;
  }
  size_t done = 0;  // text before this is handed on
  size_t pos = 0;   // where the search goes on
  while (pos < text.size()) {
    const auto [start_found, pattern] = matcher.find(text, pos);
    if (!pattern) break;
    size_t start = start_found;
    size_t stop = start + pattern->text.size();
    pos = stop;
    const AddedToken& tok = added[pattern->token];
    if (tok.single_word) {
      const bool word_before = start > 0 && is_word_char(last_char(text.substr(0, start)));
      const bool word_after = stop < text.size() && is_word_char(first_char(text.substr(stop)));
      if (word_before || word_after) continue;
    }
    if (tok.lstrip) start = std::max(whitespace_start_at_end(text.substr(0, start)), done);
    if (tok.rstrip) stop += whitespace_len_at_start(text.substr(stop));
    if (done < start) on_text(text.substr(done, start - done));
    on_token(tok.id);
    done = stop;
  }
  if (done < text.size()) on_text(text.substr(done));
}

// Split(behavior=Isolated): every match and every gap between matches is a piece.
template <class Emit>
void Tokenizer::Impl::split_regex(size_t level, std::string_view text, Scratch& scratch,
                                  Emit&& emit) const {
  if (level == splits.size()) {
    if (!text.empty()) emit(text);
    return;
  }
  pcre2_code* code = splits[level].get();
  pcre2_match_data* md = scratch.match_data[level].get();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t gap = 0;     // start of the text not yet handed on
  size_t search = 0;  // where the next match may start
  while (search < text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), search, PCRE2_NO_UTF_CHECK, md,
                               scratch.context.get());
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      MOE_THROW("tokenizer", "{}: pre_tokenizer regex failed on the input: {}", source,
                reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t ms = ov[0];
    const size_t me = ov[1];
    if (me == ms) {  // an empty match makes no piece; its character stays in the gap
      search = ms + 1;
      while (search < text.size() && (static_cast<uint8_t>(text[search]) & 0xC0) == 0x80) ++search;
      continue;
    }
    if (ms > gap) split_regex(level + 1, text.substr(gap, ms - gap), scratch, emit);
    split_regex(level + 1, text.substr(ms, me - ms), scratch, emit);
    gap = search = me;
  }
  if (gap < text.size()) split_regex(level + 1, text.substr(gap), scratch, emit);
}

// BPE on one word given as raw bytes (its byte-level form is implied by the byte ids).
void Tokenizer::Impl::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  for (unsigned char b : word) {
    const int32_t id = byte_id[b];
    if (id >= 0) {
      sym.push_back(id);
    } else if (unk_id >= 0) {  // a byte the vocabulary lacks (never with a full byte alphabet)
      if (!(fuse_unk && !sym.empty() && sym.back() == unk_id)) sym.push_back(unk_id);
    }
  }
  const size_t n = sym.size();
  if (n <= kLinearMergeMax) {
    // rank[i]: rank of the pair (sym[i], sym[i+1]), INT_MAX when it does not merge
    std::array<int32_t, kLinearMergeMax> rank;
    std::array<int32_t, kLinearMergeMax> merged;
    auto look = [&](size_t i) {
      const MergeTable::Entry* e = merges.find(sym[i], sym[i + 1]);
      rank[i] = e ? e->rank : INT32_MAX;
      merged[i] = e ? e->merged : -1;
    };
    size_t len = n;
    for (size_t i = 0; i + 1 < len; ++i) look(i);
    while (len > 1) {
      size_t best = 0;
      for (size_t i = 1; i + 1 < len; ++i)
        if (rank[i] < rank[best]) best = i;
      if (rank[best] == INT32_MAX) break;
      sym[best] = merged[best];
      for (size_t i = best + 1; i + 1 < len; ++i) {
        sym[i] = sym[i + 1];
        rank[i] = rank[i + 1];
        merged[i] = merged[i + 1];
      }
      --len;
      if (best > 0) look(best - 1);
      if (best + 1 < len) look(best);
    }
    out.insert(out.end(), sym.begin(), sym.begin() + static_cast<ptrdiff_t>(len));
    return;
  }
  // Long words: tokenizers' Word::merge_all, a heap of (rank, position) over a linked list.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Symbol> s(n);
  for (size_t i = 0; i < n; ++i)
    s[i] = {sym[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1,
            true};
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    const int32_t next = s[pos].next;
    if (next < 0) return;
    if (const MergeTable::Entry* e = merges.find(s[pos].id, s[next].id))
      heap.push({e->rank, pos, e->merged});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = s[top.pos];
    if (!left.alive || left.next < 0) continue;
    const MergeTable::Entry* e = merges.find(left.id, s[left.next].id);
    if (!e || e->merged != top.merged) continue;  // stale: a neighbour merged since
    Symbol& right = s[left.next];
    right.alive = false;
    left.id = top.merged;
    left.next = right.next;
    if (right.next >= 0) s[right.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  for (const Symbol& x : s)
    if (x.alive) out.push_back(x.id);
}

void Tokenizer::Impl::bpe(std::string_view word, StringMap<std::vector<int32_t>>* cache,
                          std::vector<int32_t>& out) const {
  if (word.size() == 1 && byte_id[static_cast<uint8_t>(word[0])] >= 0) {
    out.push_back(byte_id[static_cast<uint8_t>(word[0])]);
    return;
  }
  if (ignore_merges) {
    if (auto it = vocab_by_bytes.find(word); it != vocab_by_bytes.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (cache) {
    if (auto it = cache->find(word); it != cache->end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out.size();
  merge_word(word, out);
  if (cache && word.size() < kCacheMaxWordBytes && cache->size() < kCacheCapacity)
    cache->emplace(std::string(word),
                   std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(before), out.end()));
}

void Tokenizer::Impl::encode_into(std::string_view text, Scratch& scratch,
                                  StringMap<std::vector<int32_t>>* cache,
                                  std::vector<int32_t>& out) const {
  auto pre_tokenize = [&](std::string_view segment) {
    split_regex(0, segment, scratch, [&](std::string_view word) { bpe(word, cache, out); });
  };
  auto push_token = [&](int32_t id) { out.push_back(id); };
  split_added(
      raw_added, text,
      [&](std::string_view segment) {
        std::string normalized;
        if (nfc && may_change_under_nfc(segment)) {
          normalized = nfc_normalize(segment, source);
          segment = normalized;
        }
        split_added(normalized_added, segment, pre_tokenize, push_token);
      },
      push_token);
}

void Tokenizer::Impl::fail_id(int32_t id) const {
  MOE_THROW("tokenizer", "{}: unknown token id {} (vocabulary size {})", source, id,
            id_bytes.size());
}

// ---- Tokenizer -----------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK_AS("tokenizer", in.is_open(), "{}: cannot open tokenizer file: {}", path,
               errno ? std::strerror(errno) : "unknown error");
  std::ostringstream text;
  text << in.rdbuf();
  MOE_CHECK_AS("tokenizer", !in.bad(), "{}: read error", path);
  return from_json(text.str(), path);
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  std::string path = dir;
  if (!path.empty() && path.back() != '/') path += '/';
  return from_file(path + "tokenizer.json");
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& name) {
  auto t = std::make_unique<Impl>();
  t->source = name;
  const Loader loader(t->source);
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::parse_error& e) {
    const bool at_end = e.byte >= json_text.size();
    loader.fail("{} JSON ({})", at_end ? "truncated" : "malformed", e.what());
  } catch (const json::exception& e) {  // e.g. a number too large for any C++ type
    loader.fail("malformed JSON ({})", e.what());
  }
  if (!root.is_object()) loader.fail("top level is not a JSON object");
  try {
    load_model(root, loader, *t);
    load_normalizer(root, loader, *t);
    load_pre_tokenizer(root, loader, *t);
    check_decoder_and_post_processor(root, loader);
    load_added_tokens(root, loader, *t);
  } catch (const json::exception& e) {  // the loader checks types first; this is a backstop
    loader.fail("unexpected content ({})", e.what());
  }
  for (size_t i = 0; i < t->added.size(); ++i) {
    const AddedToken& a = t->added[i];
    if (!a.normalized)
      t->raw_added.add(a.content, i);
    else  // tokenizers matches normalized tokens by their normalized form
      t->normalized_added.add(t->nfc ? nfc_normalize(a.content, t->source) : a.content, i);
  }
  t->raw_added.finish();
  t->normalized_added.finish();
  t->scratch = t->make_scratch();
  return Tokenizer(std::move(t));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::string sanitized;
  if (!is_ascii(text) && !is_valid_utf8(text)) {
    sanitized = sanitize_utf8(text);
    text = sanitized;
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  std::unique_lock lock(impl_->mutex, std::try_to_lock);
  if (lock.owns_lock()) {
    impl_->encode_into(text, impl_->scratch, &impl_->cache, out);
  } else {  // another thread holds the cache: encode without it
    Scratch scratch = impl_->make_scratch();
    impl_->encode_into(text, scratch, nullptr, out);
  }
  return out;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_bytes.size() ||
      impl_->id_kind[id] == Impl::Kind::kNone)
    impl_->fail_id(id);
  return impl_->id_bytes[id];
}

bool Tokenizer::is_special(int32_t id) const {
  token_bytes(id);  // throws for an unknown id
  return impl_->id_kind[id] == Impl::Kind::kSpecial;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    const std::string_view b = token_bytes(id);
    if (skip_special_tokens && impl_->id_kind[id] == Impl::Kind::kSpecial) continue;
    bytes.append(b);
  }
  if (is_valid_utf8(bytes)) return bytes;
  std::string out;
  append_utf8_lossy(out, bytes, false);
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& a : impl_->added)
    if (a.content == token) return a.id;
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

int32_t Tokenizer::added_token_id(std::string_view content) const {
  for (const AddedToken& a : impl_->added)
    if (a.content == content) return a.id;
  MOE_THROW("tokenizer", "{}: has no added token '{}' (added_tokens lists {})", impl_->source,
            content, impl_->added.size());
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->id_bytes.size());
}
const std::vector<AddedToken>& Tokenizer::added_tokens() const {
  return impl_->added;
}
const std::string& Tokenizer::source() const {
  return impl_->source;
}

// ---- Streaming -----------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string StreamDecoder::push(int32_t id) {
  const std::string_view bytes = tokenizer_->token_bytes(id);
  if (skip_special_tokens_ && tokenizer_->is_special(id)) return {};
  pending_.append(bytes);
  std::string out;
  const size_t used = append_utf8_lossy(out, pending_, true);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  append_utf8_lossy(out, pending_, false);
  pending_.clear();
  return out;
}

std::string sanitize_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  append_utf8_lossy(out, text, false);
  return out;
}

}  // namespace moe::runtime
