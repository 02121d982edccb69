// libFuzzer target: arbitrary bytes as a tokenizer.json, then, when it loads, a few encodes and
// decodes (every id encode gives must decode). The only acceptable outcomes are a tokenizer or
// moe::Error; any other exception, crash, leak or sanitizer report is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kernels/common/check.h"
#include "runtime/io/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tokenizer = moe::runtime::Tokenizer::from_json(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    for (std::string_view text :
         {"Hello world, it's 2026!", "<|im_start|>user\n<think>x</think>",
          "  \r\n\r\n  12345 \xd0\x9f\xd1\x80\xd0\xb8 \xe4\xbd\xa0\xe5\xa5\xbd",
          "e\xcc\x81 \xf0\x9f\x98\x80 \xff\xed\xa0\x80"}) {
      const auto ids = tokenizer.encode(text);
      const std::string decoded = tokenizer.decode(ids);
      moe::runtime::StreamDecoder stream(tokenizer);
      std::string streamed;
      for (int32_t id : ids) streamed += stream.push(id);
      streamed += stream.finish();
      if (streamed != decoded) __builtin_trap();
    }
  } catch (const moe::Error&) {
    // Rejected with a message: the expected outcome for bad input.
  }
  return 0;
}
