// Tokenizer lookup, generation_config.json, prompt encoding and the ordered streaming printer
// behind `tokenize`, `detokenize` and `generate --prompt`.
#include "runtime/cli/text_io.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/check.h"
#include "runtime/io/chat_template.h"
#include "runtime/model/engine.h"

namespace moe::runtime {

namespace fs = std::filesystem;

std::string resolve_tokenizer_dir(const std::string& tokenizer_dir, const std::string& model) {
  if (!tokenizer_dir.empty()) return tokenizer_dir;
  MOE_CHECK_AS("input", !model.empty() && fs::is_directory(model),
               "text needs a tokenizer: give --tokenizer DIR (a directory holding "
               "tokenizer.json; a checkpoint directory as --model has one)");
  return model;
}

std::vector<int32_t> read_eos_ids(const std::vector<std::string>& dirs) {
  for (const std::string& dir : dirs) {
    if (dir.empty() || !fs::is_directory(dir)) continue;
    const fs::path path = fs::path(dir) / "generation_config.json";
    if (!fs::exists(path)) continue;
    std::ifstream in(path);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      MOE_THROW("config", "{}: not valid JSON ({})", path.string(), e.what());
    }
    std::vector<int32_t> ids;
    const auto it = j.find("eos_token_id");
    if (it == j.end() || it->is_null()) continue;  // transformers writes null when there is none
    const nlohmann::json list = it->is_array() ? *it : nlohmann::json::array({*it});
    for (const auto& v : list) {
      MOE_CHECK_AS("config", v.is_number_integer() && v.get<int64_t>() >= 0,
                   "{}: eos_token_id holds {}, not a token id", path.string(), v.dump());
      ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
    }
    return ids;
  }
  return {};
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK_AS("input", in.is_open(), "{}: cannot open", path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    const std::optional<int64_t> v = parse_id_item(item);
    MOE_CHECK_AS("input", !item.empty(), "--ids: empty item in '{}'", text);
    MOE_CHECK_AS("input", v && *v >= 0 && *v <= INT32_MAX, "--ids: '{}' is not a token id", item);
    ids.push_back(static_cast<int32_t>(*v));
  }
  return ids;
}

std::vector<std::vector<int32_t>> encode_prompts(const Tokenizer& tokenizer,
                                                 const std::vector<std::string>& prompts,
                                                 const PromptOptions& options) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& prompt : prompts) {
    if (!options.chat) {
      out.push_back(tokenizer.encode(prompt));
      continue;
    }
    std::vector<ChatMessage> messages;
    if (options.system) messages.push_back({"system", *options.system});
    messages.push_back({"user", prompt});
    ChatOptions chat;
    if (options.no_think) chat.enable_thinking = false;
    out.push_back(encode_chat(tokenizer, messages, chat));
  }
  return out;
}

TextStreamPrinter::TextStreamPrinter(const Tokenizer& tokenizer, int64_t num_sequences,
                                     int64_t max_new, std::vector<int32_t> eos_ids, std::FILE* out)
    : tokenizer_(tokenizer),
      max_new_(max_new),
      eos_ids_(std::move(eos_ids)),
      out_(out),
      texts_(static_cast<size_t>(num_sequences)),
      pending_(static_cast<size_t>(num_sequences)),
      counts_(static_cast<size_t>(num_sequences), 0),
      ended_(static_cast<size_t>(num_sequences), false) {
  for (int64_t i = 0; i < num_sequences; ++i)
    decoders_.emplace_back(tokenizer_, /*skip_special_tokens=*/true);
}

void TextStreamPrinter::emit(int64_t sequence, const std::string& text) {
  texts_[sequence] += text;
  if (sequence == cursor_) {
    std::fwrite(text.data(), 1, text.size(), out_);
    std::fflush(out_);
  } else {
    pending_[sequence] += text;
  }
}

void TextStreamPrinter::end(int64_t sequence) {
  emit(sequence, decoders_[sequence].finish());
  ended_[sequence] = true;
  const int64_t n = static_cast<int64_t>(ended_.size());
  while (cursor_ < n && ended_[cursor_]) {
    std::fputc('\n', out_);
    if (++cursor_ < n) {
      std::fwrite(pending_[cursor_].data(), 1, pending_[cursor_].size(), out_);
      pending_[cursor_].clear();
    }
  }
  std::fflush(out_);
}

void TextStreamPrinter::on_token(int64_t sequence, int32_t token) {
  if (ended_[sequence]) return;
  const bool eos = std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end();
  if (!eos) {
    if (tokenizer_.has_id(token)) {
      emit(sequence, decoders_[sequence].push(token));
    } else {
      ++num_unknown_ids_;
    }
  }
  if (eos || ++counts_[sequence] >= max_new_) end(sequence);
}

void TextStreamPrinter::finish() {
  for (int64_t i = 0; i < static_cast<int64_t>(ended_.size()); ++i)
    if (!ended_[i]) end(i);
}

}  // namespace moe::runtime
