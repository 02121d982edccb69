// Minimal NumPy .npy (format 1.0) writer/reader for float32 C-order arrays: forward's logits
// output and the test fixtures' reference logits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::runtime {

void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape,
                   const std::vector<float>& data);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// Reads a little-endian float32 ('<f4') C-order array; throws moe::Error naming the file.
NpyArray read_npy_f32(const std::string& path);

}  // namespace moe::runtime
