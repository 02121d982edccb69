// Each broken tokenizer.json gives one moe::Error ("tokenizer") that names the file and the
// problem: missing, truncated, malformed, wrong model type, merges or added tokens that do not
// fit the vocabulary, pipeline steps the runtime does not implement.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "runtime/io/tokenizer.h"
#include "tests/common/expect_error.h"
#include "tests/tokenizer/fixture_util.h"

namespace moe::runtime {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string fixture_text() {
  std::ifstream in(test::tokenizer_fixture_dir() + "/qwen3_string_merges/tokenizer.json");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class TokenizerErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("moe_tok_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    good_ = json::parse(fixture_text());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }
  // Loads the fixture with one edit applied; returns the error text, which must name the file.
  std::string error_after(const std::string& name, const std::function<void(json&)>& edit) {
    json j = good_;
    edit(j);
    const std::string path = write(name, j.dump());
    const std::string what = test::expect_error("tokenizer", [&] { Tokenizer::from_file(path); });
    EXPECT_NE(what.find(path), std::string::npos) << what;
    return what;
  }

  fs::path dir_;
  json good_;
};

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << (text)

TEST_F(TokenizerErrors, TheUneditedFixtureLoads) {
  const std::string path = write("ok.json", good_.dump());
  EXPECT_EQ(Tokenizer::from_file(path).vocab_size(), 4122);
}

TEST_F(TokenizerErrors, MissingFile) {
  const std::string path = (dir_ / "nope" / "tokenizer.json").string();
  const std::string what =
      test::expect_error("tokenizer", [&] { Tokenizer::from_dir((dir_ / "nope").string()); });
  EXPECT_HAS(what, path + ": cannot open tokenizer file: No such file or directory");
}

TEST_F(TokenizerErrors, TruncatedFile) {
  const std::string text = fixture_text();
  for (size_t keep : {size_t{0}, size_t{1}, text.size() / 2, text.size() - 2}) {
    const std::string path = write("cut.json", text.substr(0, keep));
    const std::string what = test::expect_error("tokenizer", [&] { Tokenizer::from_file(path); });
    EXPECT_HAS(what, path + ": truncated JSON");
  }
}

TEST_F(TokenizerErrors, MalformedJson) {
  const std::string path = write("bad.json", R"({"model": {"type": "BPE",, }})");
  const std::string what = test::expect_error("tokenizer", [&] { Tokenizer::from_file(path); });
  EXPECT_HAS(what, path + ": malformed JSON");
  const std::string path_num = write("num.json", R"({"model": -4E440})");
  EXPECT_HAS(test::expect_error("tokenizer", [&] { Tokenizer::from_file(path_num); }),
             path_num + ": malformed JSON");
  const std::string path2 = write("list.json", "[1, 2]");
  EXPECT_HAS(test::expect_error("tokenizer", [&] { Tokenizer::from_file(path2); }),
             "top level is not a JSON object");
}

TEST_F(TokenizerErrors, WrongModelType) {
  EXPECT_HAS(error_after("wp.json", [](json& j) { j["model"]["type"] = "WordPiece"; }),
             "unknown model type 'WordPiece' (only BPE");
  EXPECT_HAS(error_after("nomodel.json", [](json& j) { j.erase("model"); }),
             "tokenizer.json has no 'model'");
}

TEST_F(TokenizerErrors, VocabAndMerges) {
  EXPECT_HAS(error_after("id.json", [](json& j) { j["model"]["vocab"]["a"] = "seven"; }),
             "model.vocab['a']: id is not an integer");
  EXPECT_HAS(error_after("neg.json", [](json& j) { j["model"]["vocab"]["a"] = -3; }),
             "model.vocab['a']: id -3 is outside");
  EXPECT_HAS(error_after("far.json", [](json& j) { j["model"]["vocab"]["zzzz"] = 5000000; }),
             "model.vocab['zzzz']: id 5000000 is far beyond the");
  EXPECT_HAS(error_after("dup.json", [](json& j) { j["model"]["vocab"]["zzzz"] = 7; }),
             "model.vocab gives id 7 to two tokens");
  EXPECT_HAS(error_after("m1.json", [](json& j) { j["model"]["merges"].push_back("notatoken Ġ"); }),
             "('notatoken Ġ') needs 'notatoken', which is not in model.vocab");
  EXPECT_HAS(error_after("m2.json", [](json& j) { j["model"]["merges"][0] = "a b c"; }),
             "model.merges[0] 'a b c' is not two tokens separated by one space");
  EXPECT_HAS(error_after("m3.json", [](json& j) { j["model"]["merges"][0] = json::array({1}); }),
             "model.merges[0] is neither");
  EXPECT_HAS(error_after("m4.json", [](json& j) { j["model"]["merges"] = 5; }),
             "model.merges is missing or not an array");
}

TEST_F(TokenizerErrors, AddedTokens) {
  EXPECT_HAS(
      error_after(
          "a1.json",
          [](json& j) {
            j["added_tokens"].push_back({{"id", 7}, {"content", "<|new|>"}, {"special", true}});
          }),
      "id 7 of '<|new|>' belongs to another model.vocab token");
  EXPECT_HAS(error_after("a2.json",
                         [](json& j) {
                           j["added_tokens"].push_back({{"id", 9000}, {"content", "<|im_end|>"}});
                         }),
             "'<|im_end|>' is listed twice");
  EXPECT_HAS(error_after("a3.json", [](json& j) { j["added_tokens"][0].erase("id"); }),
             "added_tokens[0] ('<|endoftext|>') has no id");
  EXPECT_HAS(error_after("a4.json", [](json& j) { j["added_tokens"][1]["id"] = 4096; }),
             "id 4096 of '<|im_start|>' is already taken by another added token");
  EXPECT_HAS(error_after("a5.json", [](json& j) { j["added_tokens"][0]["special"] = "yes"; }),
             "added_tokens[0].special is not true/false");
}

TEST_F(TokenizerErrors, UnsupportedPipelineSteps) {
  EXPECT_HAS(error_after("n.json",
                         [](json& j) {
                           j["normalizer"] = {{"type", "NFKC"}};
                         }),
             "unsupported normalizer 'NFKC'");
  EXPECT_HAS(error_after("p.json",
                         [](json& j) {
                           j["pre_tokenizer"] = {{"type", "Whitespace"}};
                         }),
             "unsupported pre_tokenizer 'Whitespace'");
  EXPECT_HAS(error_after("r.json",
                         [](json& j) {
                           j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?<";
                         }),
             "pre_tokenizer regex does not compile at offset");
  EXPECT_HAS(error_after("d.json",
                         [](json& j) {
                           j["decoder"] = {{"type", "WordPiece"}};
                         }),
             "unsupported decoder 'WordPiece'");
  EXPECT_HAS(error_after("pp.json",
                         [](json& j) {
                           j["post_processor"] = {{"type", "TemplateProcessing"}};
                         }),
             "unsupported post_processor 'TemplateProcessing'");
  EXPECT_HAS(error_after("bf.json", [](json& j) { j["model"]["byte_fallback"] = true; }),
             "model.byte_fallback is not supported");
}

}  // namespace
}  // namespace moe::runtime
