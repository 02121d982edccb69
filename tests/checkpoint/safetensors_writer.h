// Test helpers: a minimal safetensors writer (valid files from tensors, or raw headers/bytes for
// the bad cases), a scratch directory per test, and an expectation that a call throws
// moe::Error("checkpoint") whose message is returned for substring checks.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/common/check.h"
#include "tests/common/expect_error.h"
#include "tests/common/test_data.h"

namespace moe::testing {

struct TensorBytes {
  std::string name;
  std::string dtype;  // "BF16", "F16", "F32", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <class T>
std::vector<uint8_t> to_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

inline std::vector<uint8_t> bf16_bytes(const std::vector<bf16>& v) {
  return to_bytes(v);
}

inline std::vector<bf16> random_bf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  return moe::test::random_bf16(rng, static_cast<int64_t>(n), 2.0f);
}

// 8-byte little-endian length, header, data: exactly what the format says, nothing checked.
inline void write_raw(const std::filesystem::path& path, uint64_t header_length,
                      const std::string& header, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(header_length >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

inline void write_file_bytes(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

inline void write_header_and_data(const std::filesystem::path& path, std::string header,
                                  const std::vector<uint8_t>& data) {
  while (header.size() % 8 != 0) header += ' ';  // writers pad with spaces to align the data
  write_raw(path, header.size(), header, data);
}

// A valid file: tensors laid out back to back in the given order.
inline void write_safetensors(const std::filesystem::path& path,
                              const std::vector<TensorBytes>& tensors,
                              const nlohmann::json& metadata = nullptr) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<uint8_t> data;
  for (const TensorBytes& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data.insert(data.end(), t.bytes.begin(), t.bytes.end());
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  write_header_and_data(path, header.dump(), data);
}

inline void write_index(const std::filesystem::path& dir,
                        const std::vector<std::pair<std::string, std::string>>& weight_map) {
  nlohmann::json index;
  index["metadata"] = {{"total_size", 0}};
  index["weight_map"] = nlohmann::json::object();
  for (const auto& [tensor, file] : weight_map) index["weight_map"][tensor] = file;
  std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
}

// A fresh directory under the system temp dir, removed with the test.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    static int counter = 0;  // several scratch dirs in one test must not share a path
    std::string name = std::string("moe_ckpt_") + std::to_string(::getpid()) + "_" +
                       info->test_suite_name() + "_" + info->name() + "_" +
                       std::to_string(counter++);
    for (char& c : name) c = c == '/' ? '_' : c;  // parameterised tests have '/' in names
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  std::filesystem::path operator/(const std::string& f) const { return path_ / f; }

 private:
  std::filesystem::path path_;
};

// Runs f, expects moe::Error from the checkpoint subsystem, returns its message ("" otherwise).
template <class F>
std::string checkpoint_error(F&& f) {
  return moe::test::expect_error("checkpoint", f, moe::test::ErrorText::kMessage);
}

}  // namespace moe::testing
