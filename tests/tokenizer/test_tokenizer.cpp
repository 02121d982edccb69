// The C++ tokenizer against `tokenizers` on every fixture string: identical ids, decode equal to
// tokenizers' decode (NFC of the input for the Qwen3 layout), streaming decode that only ever
// hands out whole UTF-8 characters and adds up to the full decode.
#include <gtest/gtest.h>

#include <map>
#include <thread>

#include "runtime/io/tokenizer.h"
#include "tests/common/expect_error.h"
#include "tests/tokenizer/fixture_util.h"

namespace moe::runtime {
namespace {

using test::read_tokenizer_cases;
using test::tokenizer_fixture_dir;
using test::TokenizerCase;

struct Fixture {
  Tokenizer tokenizer;
  std::vector<TokenizerCase> cases;
};

const Fixture& fixture(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Fixture>> loaded;
  auto& f = loaded[name];
  if (!f)
    f = std::make_unique<Fixture>(Fixture{Tokenizer::from_dir(tokenizer_fixture_dir() + "/" + name),
                                          read_tokenizer_cases(name)});
  return *f;
}

std::string show_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += std::to_string(id) + " ";
  return s;
}

class TokenizerFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerFixture, IdsEqualTokenizersOnEveryString) {
  const Fixture& f = fixture(GetParam());
  ASSERT_GE(f.cases.size(), 10000u) << "fixture files missing or out of step";
  size_t num_wrong = 0;
  for (size_t i = 0; i < f.cases.size(); ++i) {
    const TokenizerCase& c = f.cases[i];
    const std::vector<int32_t> ids = f.tokenizer.encode(c.input);
    if (ids != c.ids && ++num_wrong <= 10)
      ADD_FAILURE() << "string " << i << " '" << c.input << "'\n  got      " << show_ids(ids)
                    << "\n  expected " << show_ids(c.ids);
  }
  EXPECT_EQ(num_wrong, 0u) << "of " << f.cases.size();
}

TEST_P(TokenizerFixture, DecodeEqualsTokenizersDecode) {
  const Fixture& f = fixture(GetParam());
  ASSERT_GE(f.cases.size(), 10000u);
  size_t num_wrong = 0;
  for (size_t i = 0; i < f.cases.size(); ++i) {
    const TokenizerCase& c = f.cases[i];
    const std::string text = f.tokenizer.decode(c.ids);
    const std::string skipped = f.tokenizer.decode(c.ids, /*skip_special_tokens=*/true);
    const bool ok = text == c.expected_decode &&
                    skipped == c.expected_decode_skip_special.value_or(c.expected_decode);
    if (!ok && ++num_wrong <= 10)
      ADD_FAILURE() << "string " << i << ": decode '" << text << "' expected '" << c.expected_decode
                    << "'";
  }
  EXPECT_EQ(num_wrong, 0u);
}

// The Qwen3-layout fixture has no lstrip/rstrip tokens: there decode(encode(s)) is NFC(s)
// exactly (with ill-formed input read as U+FFFD).
TEST(Tokenizer, RoundTripIsNfcOfInput) {
  const Fixture& f = fixture("qwen3_string_merges");
  ASSERT_GE(f.cases.size(), 10000u);
  size_t num_wrong = 0;
  for (const TokenizerCase& c : f.cases)
    num_wrong += f.tokenizer.decode(f.tokenizer.encode(c.input)) != c.expected_decode;
  EXPECT_EQ(num_wrong, 0u);
}

bool is_valid_utf8(const std::string& s) {
  return sanitize_utf8(s) == s;
}

TEST_P(TokenizerFixture, StreamingDecodeEmitsWholeCharactersAndAddsUpToDecode) {
  const Fixture& f = fixture(GetParam());
  ASSERT_GE(f.cases.size(), 10000u);
  size_t num_wrong = 0;
  size_t num_held = 0;  // pushes that held bytes back: the split-character path ran
  for (const TokenizerCase& c : f.cases) {
    StreamDecoder stream(f.tokenizer);
    std::string all;
    bool ok = true;
    for (int32_t id : c.ids) {
      const std::string piece = stream.push(id);
      ok &= is_valid_utf8(piece);
      num_held += piece.size() < f.tokenizer.token_bytes(id).size();
      all += piece;
    }
    all += stream.finish();
    ok &= all == f.tokenizer.decode(c.ids);
    if (!ok && ++num_wrong <= 10)
      ADD_FAILURE() << "stream of '" << c.input << "' gave '" << all << "'";
  }
  EXPECT_EQ(num_wrong, 0u);
  EXPECT_GT(num_held, 100u) << "the fixture should split characters across tokens";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerFixture,
                         ::testing::Values("qwen3_string_merges", "extra_pair_merges"));

// The id of the token that is exactly byte `b`.
int32_t byte_token(const Tokenizer& t, uint8_t b) {
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    try {
      if (t.token_bytes(id) == std::string(1, static_cast<char>(b))) return id;
    } catch (const moe::Error&) {
    }
  }
  ADD_FAILURE() << "no token for byte " << int(b);
  return -1;
}

TEST(StreamDecoder, HoldsBackASplitCharacterUntilComplete) {
  const Tokenizer& t = fixture("qwen3_string_merges").tokenizer;
  StreamDecoder stream(t);
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600
  EXPECT_EQ(stream.push(t.encode("a")[0]), "a");
  EXPECT_EQ(stream.push(byte_token(t, 0xF0)), "");
  EXPECT_EQ(stream.push(byte_token(t, 0x9F)), "");
  EXPECT_EQ(stream.push(byte_token(t, 0x98)), "");
  EXPECT_EQ(stream.push(byte_token(t, 0x80)), emoji);
  EXPECT_EQ(stream.finish(), "");
}

TEST(StreamDecoder, IllFormedBytesBecomeReplacementAsSoonAsKnown) {
  const Tokenizer& t = fixture("qwen3_string_merges").tokenizer;
  StreamDecoder stream(t);
  EXPECT_EQ(stream.push(byte_token(t, 0xE4)), "");
  EXPECT_EQ(stream.push(byte_token(t, 'x')), "\xEF\xBF\xBDx");  // E4 then 'x': a broken char
  EXPECT_EQ(stream.push(byte_token(t, 0x80)), "\xEF\xBF\xBD");  // a lone continuation byte
  EXPECT_EQ(stream.push(byte_token(t, 0xE4)), "");
  EXPECT_EQ(stream.push(byte_token(t, 0xBD)), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");  // cut off at the end: one U+FFFD
  const std::vector<int32_t> ids = {byte_token(t, 0xE4), byte_token(t, 'x'), byte_token(t, 0x80),
                                    byte_token(t, 0xE4), byte_token(t, 0xBD)};
  EXPECT_EQ(t.decode(ids), "\xEF\xBF\xBDx\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(StreamDecoder, SkipsSpecialTokensWhenAsked) {
  const Tokenizer& t = fixture("qwen3_string_merges").tokenizer;
  StreamDecoder stream(t, /*skip_special_tokens=*/true);
  EXPECT_EQ(stream.push(t.added_token_id("<|im_end|>")), "");
  EXPECT_EQ(stream.push(t.added_token_id("<think>")), "<think>");  // not special in Qwen3
}

TEST(Tokenizer, AddedTokensKeepTheirIdsAndFlags) {
  const Tokenizer& t = fixture("qwen3_string_merges").tokenizer;
  const int32_t eot = t.added_token_id("<|endoftext|>");
  EXPECT_EQ(eot, 4096);  // first id after the 4096-token BPE vocabulary
  EXPECT_EQ(t.added_token_id("<|im_start|>"), eot + 1);
  EXPECT_EQ(t.added_token_id("<|im_end|>"), eot + 2);
  EXPECT_EQ(t.added_token_id("</think>"), eot + 25);
  EXPECT_EQ(t.vocab_size(), eot + 26);
  EXPECT_TRUE(t.is_special(eot));
  EXPECT_FALSE(t.is_special(t.added_token_id("<think>")));
  std::vector<int32_t> expected = {eot + 1};
  for (int32_t id : t.encode("user\n")) expected.push_back(id);
  expected.push_back(eot + 2);
  EXPECT_EQ(t.encode("<|im_start|>user\n<|im_end|>"), expected);
}

// decode leaves out ids the tokenizer lacks, as `tokenizers` does (its decode skips an id without
// a token): a model's embedding may be larger than its tokenizer (Qwen3: 151,669-151,935 have no
// token). Asking for one id's bytes, or for an added token it lacks, names the file.
TEST(Tokenizer, DecodeDropsIdsOutsideTheTokenizerAndLookupsNameTheFile) {
  const Tokenizer& t = fixture("qwen3_string_merges").tokenizer;
  const std::vector<int32_t> hello = t.encode("hello");
  std::vector<int32_t> with_unknown = {t.vocab_size(), t.vocab_size() + 100};
  with_unknown.insert(with_unknown.begin() + 1, hello.begin(), hello.end());
  EXPECT_EQ(t.decode(with_unknown), "hello");
  EXPECT_FALSE(t.has_id(t.vocab_size()));
  EXPECT_FALSE(t.has_id(-1));
  EXPECT_TRUE(t.has_id(t.vocab_size() - 1));
  StreamDecoder stream(t);
  std::string streamed;
  for (int32_t id : with_unknown) streamed += stream.push(id);
  EXPECT_EQ(streamed + stream.finish(), "hello");
  EXPECT_EQ(StreamDecoder(t).push(-1), "");
  std::string what = test::expect_error("tokenizer", [&] { t.token_bytes(t.vocab_size()); });
  EXPECT_NE(what.find("qwen3_string_merges/tokenizer.json"), std::string::npos) << what;
  EXPECT_NE(what.find("unknown token id 4122"), std::string::npos) << what;
  what = test::expect_error("tokenizer", [&] { t.added_token_id("<|eot_id|>"); });
  EXPECT_NE(what.find("has no added token '<|eot_id|>'"), std::string::npos) << what;
  EXPECT_NE(what.find("qwen3_string_merges/tokenizer.json"), std::string::npos) << what;
}

// NFC with Unicode 9.0's tables, as `tokenizers` normalises: U+1AC1 (assigned in Unicode 14,
// combining class 230 there) followed by U+0334 (class 1) keeps its order, where ICU's current
// NFC would swap the two marks. Marks known to Unicode 9.0 still reorder and compose.
TEST(Tokenizer, NfcUsesUnicode9Tables) {
  const Tokenizer& t = fixture("qwen3_string_merges").tokenizer;
  const std::string kept = "a\xe1\xab\x81\xcc\xb4";     // a U+1AC1 U+0334, as given
  const std::string swapped = "a\xcc\xb4\xe1\xab\x81";  // what ICU 72's NFC makes of it
  EXPECT_EQ(t.decode(t.encode(kept)), kept);
  EXPECT_NE(t.encode(kept), t.encode(swapped));
  // U+0301 (acute, class 230) after U+0334 (class 1) is in canonical order; the reverse order
  // is reordered, and e + U+0301 composes to U+00E9 (all in Unicode 9.0).
  EXPECT_EQ(t.encode("e\xcc\x81\xcc\xb4"), t.encode("\xc3\xa9\xcc\xb4"));
}

TEST(Tokenizer, ConcurrentEncodesAgree) {
  const Fixture& f = fixture("qwen3_string_merges");
  ASSERT_GE(f.cases.size(), 10000u);
  std::vector<size_t> wrong(2, 0);
  std::vector<std::thread> threads;
  for (size_t w = 0; w < 2; ++w)
    threads.emplace_back([&, w] {
      for (size_t i = w; i < f.cases.size(); i += 2)
        wrong[w] += f.tokenizer.encode(f.cases[i].input) != f.cases[i].ids;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong[0] + wrong[1], 0u);
}

}  // namespace
}  // namespace moe::runtime
