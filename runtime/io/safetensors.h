// safetensors reader: validates a header completely before any tensor byte is trusted, and maps
// the file read-only so a tensor read touches only that tensor's pages. Invariant: every
// SafetensorsTensor of a parsed header lies inside the data buffer, and the tensors tile it.
// Also a small writer (routing traces), whose files the reader accepts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moe::runtime {

// Element types the format defines (https://github.com/huggingface/safetensors).
enum class SafetensorsDtype {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64
};

int64_t dtype_size_bytes(SafetensorsDtype dtype);
std::string_view dtype_name(SafetensorsDtype dtype);  // as spelled in headers: "BF16", ...

// Largest header accepted (the reference implementation's limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsTensor {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kBF16;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  uint64_t begin_bytes = 0;  // offsets into the data buffer, end exclusive
  uint64_t end_bytes = 0;
  uint64_t size_bytes() const { return end_bytes - begin_bytes; }
};

struct SafetensorsHeader {
  std::vector<SafetensorsTensor> tensors;  // sorted by begin_bytes
  std::map<std::string, std::string> metadata;
  uint64_t data_size_bytes = 0;
  // nullptr when absent.
  const SafetensorsTensor* find(std::string_view name) const;

 private:
  friend SafetensorsHeader parse_safetensors_header(std::string_view, uint64_t, const std::string&);
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors
};

// Validates the JSON header of a file whose data buffer holds `data_size_bytes` bytes. Pure: no
// file is read. Throws moe::Error("checkpoint", "<file>: <what>[, tensor '<name>']").
SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size_bytes,
                                           const std::string& file_for_errors);

// Validates a whole file image (8-byte little-endian header length, header, data buffer).
SafetensorsHeader parse_safetensors_image(std::span<const uint8_t> image,
                                          const std::string& file_for_errors);

// Reads and validates only the header of a file (8 + N bytes), checking it against the file's
// size. Used to learn which tensors a shard holds without mapping it.
SafetensorsHeader read_safetensors_header(const std::string& path);

// One safetensors file mapped read-only (MAP_PRIVATE). Move-only; unmaps on destruction.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);
  SafetensorsFile() = default;
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  uint64_t file_size_bytes() const { return size_bytes_; }
  // The bytes of one tensor of this file's header.
  std::span<const std::byte> data(const SafetensorsTensor& tensor) const;

 private:
  void reset();

  std::string path_;
  SafetensorsHeader header_;
  const std::byte* map_ = nullptr;
  uint64_t size_bytes_ = 0;
  uint64_t data_begin_bytes_ = 0;  // 8 + N
};

// One tensor to write: its bytes (little-endian, row-major) must hold numel(shape) elements.
struct SafetensorsTensorView {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// Writes a safetensors file: tensors back to back in the given order, the header padded with
// spaces to 8 bytes, `metadata` as __metadata__. Throws moe::Error("io") naming the path when a
// tensor's bytes do not match its shape or the file cannot be written.
void write_safetensors(const std::string& path, std::span<const SafetensorsTensorView> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace moe::runtime
