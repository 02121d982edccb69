// Reading a HuggingFace tokenizer.json into Tokenizer::Impl: the BPE model (vocabulary, merges),
// NFC, the Split / ByteLevel pre-tokenizers (regexes compiled by PCRE2 with JIT) and the added
// tokens. Only what Qwen2/Qwen3 use is accepted; anything else fails naming the file and the key.
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/check.h"
#include "runtime/io/tokenizer_impl.h"

namespace moe::runtime {
using namespace tokenizer_detail;
namespace {

using json = nlohmann::json;

// Ids above this are refused: real vocabularies hold ~150k; a larger id is a broken file and
// would make the id tables huge.
constexpr int64_t kMaxId = (1 << 24) - 1;
// The pre-tokenizer regex of GPT-2, used by a ByteLevel pre-tokenizer with use_regex=true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// `\s` as Oniguruma (the regex engine of tokenizers) reads it: the White_Space property.
// PCRE2 10.42's \s also takes U+180E, so patterns are rewritten to this explicit class.
constexpr std::string_view kWhiteSpaceClass =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

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

// model's options: no dropout, subword prefix or suffix, or byte fallback; ignore_merges and
// fuse_unk are read.
void read_model_options(const json& model, const Loader& loader, Tokenizer::Impl& t) {
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
}

// model.vocab: each id once, its bytes, and the lookups by byte-level string and by raw bytes.
void load_vocab(const json& root, const json& vocab, const Loader& loader, Tokenizer::Impl& t) {
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
}

// The id of each single byte (-1 where the vocabulary lacks it) and of model.unk_token.
void find_byte_and_unk_ids(const json& model, const Loader& loader, Tokenizer::Impl& t) {
  t.byte_id.fill(-1);
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    append_code_point(ch, alphabet().byte_to_char[b]);
    if (auto it = t.vocab.find(ch); it != t.vocab.end()) t.byte_id[b] = it->second;
  }
  if (const json* unk = loader.find(model, "unk_token")) {
    if (!unk->is_string()) loader.fail("model.unk_token is not a string");
    auto it = t.vocab.find(unk->get<std::string>());
    if (it == t.vocab.end())
      loader.fail("model.unk_token '{}' is not in model.vocab", unk->get<std::string>());
    t.unk_id = it->second;
  }
}

// model.merges, "a b" or ["a", "b"]: the rank of a merge is its position.
void load_merges(const json& merges, const Loader& loader, Tokenizer::Impl& t) {
  t.merges.reserve(merges.size());
  std::string a, b;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
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
  read_model_options(model, loader, t);
  load_vocab(root, vocab, loader, t);
  find_byte_and_unk_ids(model, loader, t);
  load_merges(*merges, loader, t);
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

}  // namespace

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

}  // namespace moe::runtime
