// Byte-level BPE as the `tokenizers` library runs it for Qwen2/Qwen3's tokenizer.json: encoding,
// decoding and streaming. Order of work per encode: sanitize UTF-8 -> split out raw-matched added
// tokens -> NFC per remaining segment -> split out normalized added tokens -> Split regex(es) ->
// bytes -> BPE (word cache). Loading is in tokenizer_load.cpp, text helpers in tokenizer_text.cpp.
#include "runtime/io/tokenizer.h"

#include <algorithm>
#include <array>
#include <climits>
#include <functional>
#include <queue>

#include "kernels/common/check.h"
#include "runtime/io/tokenizer_impl.h"

namespace moe::runtime {
using namespace tokenizer_detail;
namespace {

// Words (pre-tokenized pieces) remembered with their ids; like tokenizers, the cache stops
// growing when full and long pieces are not cached.
constexpr size_t kCacheCapacity = 1 << 16;
constexpr size_t kCacheMaxWordBytes = 256;
// Words up to this many bytes merge with a linear scan; longer ones with a priority queue.
constexpr size_t kLinearMergeMax = 48;

// BPE on symbols of a short word (at most kLinearMergeMax): repeatedly merge the pair of lowest
// rank, found by a linear scan over the pairs' ranks.
void merge_short_word(std::vector<int32_t>& sym, const MergeTable& merges,
                      std::vector<int32_t>& out) {
  const size_t n = sym.size();
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
}

// BPE on symbols of a long word: tokenizers' Word::merge_all, a heap of (rank, position) over a
// linked list.
void merge_long_word(const std::vector<int32_t>& sym, const MergeTable& merges,
                     std::vector<int32_t>& out) {
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
  const size_t n = sym.size();
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
  if (sym.size() <= kLinearMergeMax) {
    merge_short_word(sym, merges, out);
  } else {
    merge_long_word(sym, merges, out);
  }
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

bool Tokenizer::has_id(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_bytes.size() &&
         impl_->id_kind[id] != Impl::Kind::kNone;
}

bool Tokenizer::is_special(int32_t id) const {
  token_bytes(id);  // throws for an unknown id
  return impl_->id_kind[id] == Impl::Kind::kSpecial;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (!has_id(id)) continue;
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
  if (!tokenizer_->has_id(id)) return {};
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

}  // namespace moe::runtime
