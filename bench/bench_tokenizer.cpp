// Encode speed of runtime/io/tokenizer on one core: every document of a JSON-lines file
// ({"text": ...} per line) encoded one call each, best of --repeat passes (the first pass also
// fills the word cache, as a long-running server's would be). bench_tokenizer.py runs this and
// the `tokenizers` package on the same documents in the same run and prints the ratio.
//   bench_tokenizer --tokenizer DIR|FILE --docs DOCS.jsonl [--repeat R] [--json OUT]
// A benchmark, not a test: it prints a table and writes JSON; it asserts nothing.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/common/check.h"
#include "runtime/io/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<std::string> read_docs(const std::string& path) {
  std::ifstream in(path);
  MOE_CHECK_AS("bench", in.is_open(), "{}: cannot open", path);
  std::vector<std::string> docs;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) docs.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
  return docs;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, docs_path, json_path;
  int repeat = 5;
  CLI::App app{"Encode speed of the C++ tokenizer on one core"};
  app.add_option("--tokenizer", tokenizer_path, "tokenizer.json or a directory holding it")
      ->required();
  app.add_option("--docs", docs_path, "JSON lines, one {\"text\": ...} per document")->required();
  app.add_option("--repeat", repeat, "Timed passes over all documents (best reported)");
  app.add_option("--json", json_path, "Write results as JSON");
  CLI11_PARSE(app, argc, argv);

  try {
    const auto tokenizer = std::filesystem::is_directory(tokenizer_path)
                               ? moe::runtime::Tokenizer::from_dir(tokenizer_path)
                               : moe::runtime::Tokenizer::from_file(tokenizer_path);
    const std::vector<std::string> docs = read_docs(docs_path);
    size_t num_bytes = 0;
    for (const auto& d : docs) num_bytes += d.size();

    std::vector<double> pass_s;
    size_t num_tokens = 0;
    uint64_t checksum = 0;  // sum of (position+1)*id over every document: same ids, same sum
    for (int r = 0; r < repeat; ++r) {
      num_tokens = 0;
      checksum = 0;
      const auto t0 = Clock::now();
      for (const auto& d : docs) {
        const std::vector<int32_t> ids = tokenizer.encode(d);
        for (size_t i = 0; i < ids.size(); ++i) checksum += (i + 1) * static_cast<uint64_t>(ids[i]);
        num_tokens += ids.size();
      }
      pass_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    const double best_s = *std::min_element(pass_s.begin(), pass_s.end());
    const double first_s = pass_s.front();

    fmt::print("{:>10} {:>12} {:>12} {:>12} {:>12} {:>14}\n", "docs", "bytes", "tokens", "best_s",
               "MB/s", "tokens/s");
    fmt::print("{:>10} {:>12} {:>12} {:>12.4f} {:>12.2f} {:>14.0f}\n", docs.size(), num_bytes,
               num_tokens, best_s, num_bytes / best_s / 1e6, num_tokens / best_s);
    fmt::print("first pass (cold word cache) {:.4f} s; checksum {}\n", first_s, checksum);

    if (!json_path.empty()) {
      nlohmann::json out = {{"impl", "moe-ep"},
                            {"docs", docs.size()},
                            {"bytes", num_bytes},
                            {"tokens", num_tokens},
                            {"checksum", checksum},
                            {"best_s", best_s},
                            {"first_pass_s", first_s},
                            {"passes_s", pass_s},
                            {"mb_per_s", num_bytes / best_s / 1e6}};
      std::ofstream(json_path) << out.dump(1) << "\n";
    }
  } catch (const moe::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
