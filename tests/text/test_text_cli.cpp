// moe-ep tokenize / detokenize / generate --prompt end to end: ids equal to `tokenizers` line by
// line, the same text on 1 and 2 ranks, greedy ids equal to generate --tokens, seeded sampling
// independent of the rank count, EOS from generation_config.json, and one clear error (exit 1)
// for a missing tokenizer, an added token the chat format needs but the tokenizer lacks, and a
// prompt longer than the context.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/cli/cli_util.h"
#include "tests/tokenizer/fixture_util.h"

namespace moe::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kQwenTok = source("tests/fixtures/tokenizer/qwen3_string_merges");
const std::string kBytesTok = source("tests/fixtures/tokenizer/bytes256");
const std::string kMoe128 = source("tests/fixtures/hf/moe128");

std::string quote(const std::string& s) {  // for /bin/sh, single quotes
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

json read_json(const fs::path& p) {
  return json::parse(read_text(p));
}

TEST(TextCli, TokenizeEachLineOfAFileLikeTokenizers) {
  const auto texts = read_jsonl(tokenizer_fixture_dir() + "/texts.jsonl");
  const auto expected = read_jsonl(kQwenTok + "/expected_ids.jsonl");
  ASSERT_EQ(texts.size(), expected.size());
  const fs::path dir = temp_dir("tokenize");
  std::ofstream file(dir / "lines.txt", std::ios::binary);
  std::vector<json> want;
  for (size_t i = 0; i < texts.size() && want.size() < 2000; ++i) {
    const std::string t = texts[i]["text"];
    if (texts[i].contains("bytes_hex") || t.find_first_of("\r\n") != std::string::npos) continue;
    file << t << "\n";
    want.push_back(expected[i]["ids"]);
  }
  file.close();
  const CommandResult r = run(moe_ep() + " tokenize --tokenizer " + kQwenTok + " --file " +
                              (dir / "lines.txt").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream out(r.out);
  size_t i = 0, num_wrong = 0;
  for (std::string line; std::getline(out, line); ++i)
    num_wrong += i >= want.size() || json::parse(line) != want[i];
  EXPECT_EQ(i, want.size());
  EXPECT_EQ(num_wrong, 0u);
}

TEST(TextCli, TokenizeThenDetokenizeGivesTheText) {
  const std::string text = "Hi <|im_start|>user мир 你好 \xF0\x9F\x98\x80 e\xCC\x81";
  const CommandResult t =
      run(moe_ep() + " tokenize --tokenizer " + kQwenTok + " --text " + quote(text));
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const json ids = json::parse(t.out);
  ASSERT_TRUE(ids.is_array());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), json(4097)), 1);  // <|im_start|>: one id
  std::string list;
  for (const auto& id : ids) list += (list.empty() ? "" : ",") + std::to_string(id.get<int>());
  const CommandResult d =
      run(moe_ep() + " detokenize --tokenizer " + kQwenTok + " --ids " + quote(list));
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "Hi <|im_start|>user мир 你好 \xF0\x9F\x98\x80 \xC3\xA9\n");  // NFC
  const CommandResult skip = run(moe_ep() + " detokenize --skip-special --tokenizer " + kQwenTok +
                                 " --ids " + quote(list));
  EXPECT_EQ(skip.out, "Hi user мир 你好 \xF0\x9F\x98\x80 \xC3\xA9\n");
}

struct Generated {
  CommandResult result;
  json j;
};

Generated generate(int ranks, const std::string& args) {
  static int n = 0;
  const fs::path out = temp_dir("gen") / ("g" + std::to_string(n++) + ".json");
  Generated g;
  g.result = run(mpirun(ranks) + " generate --quiet --model " + kMoe128 + " --json " +
                 out.string() + " " + args);
  if (g.result.exit_code == 0) g.j = read_json(out);
  return g;
}

const char* kPrompts = "Hello world\nThe expert\nZ\n";

fs::path prompts_file() {
  const fs::path p = temp_dir("prompts") / "prompts.txt";
  std::ofstream(p) << kPrompts;
  return p;
}

TEST(TextCli, PromptTextIsTheSameOnOneAndTwoRanks) {
  const std::string args = "--tokenizer " + kBytesTok + " --prompts-file " +
                           prompts_file().string() + " --max-new-tokens 8";
  const Generated one = generate(1, args);
  const Generated two = generate(2, args);
  ASSERT_EQ(one.result.exit_code, 0) << one.result.err;
  ASSERT_EQ(two.result.exit_code, 0) << two.result.err;
  EXPECT_EQ(one.result.out, two.result.out);
  EXPECT_EQ(one.j["tokens"], two.j["tokens"]);
  ASSERT_EQ(one.j["texts"].size(), 3u);
  std::string printed;
  for (const auto& t : one.j["texts"]) printed += t.get<std::string>() + "\n";
  EXPECT_EQ(one.result.out, printed);
  for (const auto& seq : one.j["tokens"]) EXPECT_EQ(seq.size(), 8u);  // moe128 names no EOS
  EXPECT_EQ(one.j["prompt_tokens"][2], json::array({'Z'}));           // bytes256: id = byte
}

TEST(TextCli, GreedyPromptIdsEqualGenerateTokens) {
  const Generated text = generate(2, "--tokenizer " + kBytesTok + " --prompts-file " +
                                         prompts_file().string() + " --max-new-tokens 6");
  ASSERT_EQ(text.result.exit_code, 0) << text.result.err;
  std::string batch;
  for (const auto& p : text.j["prompt_tokens"]) {
    std::string seq;
    for (const auto& id : p) seq += (seq.empty() ? "" : ",") + std::to_string(id.get<int>());
    batch += (batch.empty() ? "" : ";") + seq;
  }
  const Generated ids = generate(2, "--tokens " + quote(batch) + " --max-new-tokens 6");
  ASSERT_EQ(ids.result.exit_code, 0) << ids.result.err;
  EXPECT_EQ(text.j["tokens"], ids.j["tokens"]);
}

TEST(TextCli, SameSeedSameSampledTextOnAnyRankCount) {
  const std::string args = "--tokenizer " + kBytesTok + " --prompts-file " +
                           prompts_file().string() +
                           " --max-new-tokens 8 --temperature 0.9 --top-k 40 --top-p 0.95";
  const Generated one = generate(1, args + " --seed 7");
  const Generated two = generate(2, args + " --seed 7");
  const Generated other = generate(1, args + " --seed 8");
  ASSERT_EQ(one.result.exit_code, 0) << one.result.err;
  ASSERT_EQ(two.result.exit_code, 0) << two.result.err;
  ASSERT_EQ(other.result.exit_code, 0) << other.result.err;
  EXPECT_EQ(one.j["tokens"], two.j["tokens"]);
  EXPECT_EQ(one.result.out, two.result.out);
  EXPECT_NE(one.j["tokens"], other.j["tokens"]);
  const Generated greedy = generate(1, "--tokenizer " + kBytesTok + " --prompts-file " +
                                           prompts_file().string() + " --max-new-tokens 8");
  EXPECT_NE(one.j["tokens"], greedy.j["tokens"]);
}

TEST(TextCli, StopsAtTheEosOfGenerationConfig) {
  const Generated free =
      generate(1, "--tokenizer " + kBytesTok + " --prompt 'Hello world' " + "--max-new-tokens 8");
  ASSERT_EQ(free.result.exit_code, 0) << free.result.err;
  const json seq = free.j["tokens"][0];
  ASSERT_EQ(seq.size(), 8u);
  // a tokenizer directory whose generation_config.json names the third generated id as EOS
  const fs::path dir = temp_dir("eos_tok");
  fs::copy_file(kBytesTok + "/tokenizer.json", dir / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  std::ofstream(dir / "generation_config.json") << json{{"eos_token_id", {seq[2], 255}}}.dump();
  const Generated stopped =
      generate(2, "--tokenizer " + dir.string() + " --prompt 'Hello world' --max-new-tokens 8");
  ASSERT_EQ(stopped.result.exit_code, 0) << stopped.result.err;
  size_t first_eos = 0;
  while (seq[first_eos] != seq[2] && seq[first_eos] != 255) ++first_eos;
  json want = json::array();
  for (size_t i = 0; i <= first_eos; ++i) want.push_back(seq[i]);
  EXPECT_EQ(stopped.j["tokens"][0], want);
  EXPECT_EQ(stopped.j["eos_ids"], json::array({seq[2], 255}));
}

TEST(TextCli, ChatPromptOnASyntheticModelWithATokenizer) {
  const fs::path dir = temp_dir("chat_model");
  std::string yaml = read_text(source("configs/models/tiny.yaml"));
  const size_t at = yaml.find("vocab_size: 512");
  ASSERT_NE(at, std::string::npos);
  yaml.replace(at, 15, "vocab_size: 4224");
  std::ofstream(dir / "model.yaml") << yaml;
  const fs::path out = dir / "out.json";
  const CommandResult r =
      run(mpirun(2) + " generate --quiet --model " + (dir / "model.yaml").string() +
          " --tokenizer " + kQwenTok + " --prompt 'What is MoE?' --chat --system 'Be brief.' " +
          "--no-think --max-new-tokens 4 --json " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json prompt = read_json(out)["prompt_tokens"][0];
  EXPECT_EQ(prompt[0], 4097);  // <|im_start|>
  // ends with "<|im_start|>assistant\n<think>\n\n</think>\n\n"
  const auto pos_think = std::find(prompt.begin(), prompt.end(), json(4120));
  const auto pos_end_think = std::find(prompt.begin(), prompt.end(), json(4121));
  EXPECT_NE(pos_think, prompt.end());
  EXPECT_LT(pos_think, pos_end_think);
  EXPECT_LE(prompt.end() - pos_end_think, 3);
}

TEST(TextCli, ErrorsAreOneLineAndExitOne) {
  const fs::path empty = temp_dir("no_tokenizer");
  CommandResult r = run(mpirun(2) + " generate --model " + kMoe128 + " --tokenizer " +
                        empty.string() + " --prompt hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find((empty / "tokenizer.json").string() + ": cannot open tokenizer file"),
            std::string::npos)
      << r.err;

  r = run(moe_ep() + " generate --model " + kMoe128 + " --tokenizer " + kBytesTok +
          " --prompt hi --chat");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bytes256/tokenizer.json: has no added token '<|im_start|>'"),
            std::string::npos)
      << r.err;

  r = run(moe_ep() + " generate --model " + kMoe128 + " --tokenizer " + kBytesTok + " --prompt " +
          std::string(600, 'x') + " --max-new-tokens 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("the longest prompt plus --max-new-tokens needs 604 positions"),
            std::string::npos)
      << r.err;

  r = run(moe_ep() + " generate --model " + kMoe128 + " --prompt hi");  // no tokenizer.json there
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("moe128/tokenizer.json: cannot open tokenizer file"), std::string::npos)
      << r.err;

  r = run(moe_ep() + " generate --model " + kMoe128);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("generate needs --tokens, --prompt or --prompts-file"), std::string::npos)
      << r.err;
  r = run(moe_ep() + " generate --model " + kMoe128 + " --prompt hi --no-think");
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

}  // namespace
}  // namespace moe::test
