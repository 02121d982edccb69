// libFuzzer target: arbitrary bytes as a whole safetensors file image (8-byte little-endian
// header length, header, data buffer) through the same validation a file on disk gets.
// The only acceptable outcomes are a parsed header or moe::Error; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/common/check.h"
#include "runtime/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const moe::runtime::SafetensorsHeader header =
        moe::runtime::parse_safetensors_image(std::span<const uint8_t>(data, size), "fuzz");
    // A header that passed must describe tensors inside the buffer that tile it exactly.
    uint64_t covered = 0;
    for (const auto& t : header.tensors) {
      if (t.begin_bytes != covered || t.end_bytes < t.begin_bytes ||
          t.end_bytes > header.data_size_bytes) {
        __builtin_trap();
      }
      covered = t.end_bytes;
      if (header.find(t.name) != &t) __builtin_trap();
    }
    if (covered != header.data_size_bytes) __builtin_trap();
  } catch (const moe::Error&) {
    // Rejected with a message: the expected outcome for bad input.
  }
  return 0;
}
