// The tokenizer's text handling: UTF-8 repair (U+FFFD per maximal subpart, as Python and Rust),
// the character classes added tokens match with (White_Space, \w), GPT-2's byte-level alphabet
// and NFC (ICU). Pure functions of their input; the alphabet is built once.
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>
#include <unicode/uniset.h>
#include <unicode/utf8.h>

#include <memory>

#include "kernels/common/check.h"
#include "runtime/io/tokenizer_impl.h"

namespace moe::runtime {
namespace tokenizer_detail {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Rust's char::is_whitespace (the White_Space property), as tokenizers' lstrip/rstrip use it.
bool is_white_space(UChar32 c) {
  return u_hasBinaryProperty(c, UCHAR_WHITE_SPACE);
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

}  // namespace

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
UChar32 last_char(std::string_view s) {
  size_t start = 0;
  return char_before(s, s.size(), start);
}

size_t whitespace_start_at_end(std::string_view s) {
  size_t index = s.size();
  while (index > 0) {
    size_t start = 0;
    if (!is_white_space(char_before(s, index, start))) break;
    index = start;
  }
  return index;
}
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

ByteLevelAlphabet::ByteLevelAlphabet() {
  char_to_byte.fill(-1);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    byte_to_char[b] = printable ? b : next++;
    char_to_byte[byte_to_char[b]] = static_cast<int16_t>(b);
  }
}

std::optional<std::string> ByteLevelAlphabet::to_bytes(std::string_view s) const {
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

const ByteLevelAlphabet& alphabet() {
  static const ByteLevelAlphabet table;
  return table;
}

// ---- NFC -----------------------------------------------------------------------------------

namespace {

// NFC as of Unicode 9.0, the tables of the `tokenizers` library (its unicode-normalization
// crate): characters assigned after 9.0 are left as they are and split the text into runs that
// are normalised apart, as ICU's FilteredNormalizer2 over [:age=9.0:] does. ICU's own NFC follows
// its current Unicode version, under which e.g. U+1AC1 (Unicode 14, combining class 230) swaps
// with a following U+0334 (class 1); `tokenizers` keeps their order.
struct Nfc9 {
  icu::UnicodeSet assigned_by_9;
  std::unique_ptr<icu::FilteredNormalizer2> normalizer;
  UErrorCode status = U_ZERO_ERROR;
  Nfc9() : assigned_by_9(icu::UnicodeString("[:age=9.0:]"), status) {
    const icu::Normalizer2* nfc =
        U_SUCCESS(status) ? icu::Normalizer2::getNFCInstance(status) : nullptr;
    if (U_SUCCESS(status)) {
      assigned_by_9.freeze();
      normalizer = std::make_unique<icu::FilteredNormalizer2>(*nfc, assigned_by_9);
    }
  }
};

}  // namespace

std::string nfc_normalize(std::string_view s, const std::string& source) {
  static const Nfc9 nfc9;
  UErrorCode status = nfc9.status;
  const icu::Normalizer2* nfc = nfc9.normalizer.get();
  MOE_CHECK_AS("tokenizer", U_SUCCESS(status) && nfc != nullptr,
               "{}: ICU NFC (Unicode 9.0) normalizer unavailable: {}", source, u_errorName(status));
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

}  // namespace tokenizer_detail

std::string sanitize_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  tokenizer_detail::append_utf8_lossy(out, text, false);
  return out;
}

}  // namespace moe::runtime
