// safetensors reader: header validation (pure, fuzzed) and the read-only file mapping.
// Nothing is trusted until parse_safetensors_header returns: every size is overflow-checked and
// every offset checked against the data buffer, so a read through SafetensorsFile stays in bounds.
#include "runtime/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "kernels/common/check.h"

// Every failure is one moe::Error("checkpoint", "<file>: <what>[, tensor '<name>']").
#define MOE_CKPT_FAIL(file, ...) MOE_THROW("checkpoint", "{}: {}", file, ::fmt::format(__VA_ARGS__))

namespace moe::runtime {
namespace {

using nlohmann::json;

struct DtypeInfo {
  SafetensorsDtype dtype;
  std::string_view name;
  int64_t size_bytes;
};

constexpr std::array<DtypeInfo, 15> kDtypes{{
    {SafetensorsDtype::kBool, "BOOL", 1},
    {SafetensorsDtype::kU8, "U8", 1},
    {SafetensorsDtype::kI8, "I8", 1},
    {SafetensorsDtype::kF8E5M2, "F8_E5M2", 1},
    {SafetensorsDtype::kF8E4M3, "F8_E4M3", 1},
    {SafetensorsDtype::kI16, "I16", 2},
    {SafetensorsDtype::kU16, "U16", 2},
    {SafetensorsDtype::kF16, "F16", 2},
    {SafetensorsDtype::kBF16, "BF16", 2},
    {SafetensorsDtype::kI32, "I32", 4},
    {SafetensorsDtype::kU32, "U32", 4},
    {SafetensorsDtype::kF32, "F32", 4},
    {SafetensorsDtype::kF64, "F64", 8},
    {SafetensorsDtype::kI64, "I64", 8},
    {SafetensorsDtype::kU64, "U64", 8},
}};

const DtypeInfo& info_of(SafetensorsDtype dtype) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.dtype == dtype) return d;
  }
  MOE_THROW("checkpoint", "internal: unhandled dtype {}", static_cast<int>(dtype));
}

// Keeps error messages one readable line even for hostile names (a fuzzed name can be megabytes).
std::string clip(std::string_view s) {
  constexpr size_t kMax = 200;
  if (s.size() <= kMax) return std::string(s);
  return fmt::format("{}...({} bytes)", s.substr(0, kMax), s.size());
}

uint64_t read_le_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Checks the 8-byte length prefix against the file size; returns the data buffer's size.
uint64_t check_header_length(uint64_t file_size, uint64_t header_bytes, const std::string& file) {
  if (file_size == 0)
    MOE_CKPT_FAIL(file, "file is empty (a safetensors file starts with 8 bytes of header length)");
  if (file_size < 8) {
    MOE_CKPT_FAIL(file, "file is {} bytes, shorter than the 8-byte header length", file_size);
  }
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    MOE_CKPT_FAIL(file, "header length {} exceeds the {} byte (100 MB) limit", header_bytes,
                  kMaxSafetensorsHeaderBytes);
  }
  if (header_bytes > file_size - 8) {
    MOE_CKPT_FAIL(file, "header length {} runs past the end of the file ({} bytes; truncated?)",
                  header_bytes, file_size);
  }
  return file_size - 8 - header_bytes;
}

// A JSON value that must be a non-negative integer fitting in int64.
bool as_count(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  const uint64_t u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(INT64_MAX)) return false;
  *out = u;
  return true;
}

SafetensorsTensor parse_entry(const std::string& name, const json& entry, uint64_t data_size_bytes,
                              const std::string& file) {
  const std::string cname = clip(name);
  if (!entry.is_object()) {
    MOE_CKPT_FAIL(file, "header entry is a JSON {}, not an object, tensor '{}'", entry.type_name(),
                  cname);
  }
  SafetensorsTensor t;
  t.name = name;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end())
    MOE_CKPT_FAIL(file, "header entry has no 'dtype', tensor '{}'", cname);
  if (!dtype_it->is_string()) {
    MOE_CKPT_FAIL(file, "'dtype' is a JSON {}, not a string, tensor '{}'", dtype_it->type_name(),
                  cname);
  }
  const std::string& dtype = dtype_it->get_ref<const std::string&>();
  const auto known = std::find_if(kDtypes.begin(), kDtypes.end(),
                                  [&](const DtypeInfo& d) { return d.name == dtype; });
  if (known == kDtypes.end())
    MOE_CKPT_FAIL(file, "unknown dtype '{}', tensor '{}'", clip(dtype), cname);
  t.dtype = known->dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end())
    MOE_CKPT_FAIL(file, "header entry has no 'shape', tensor '{}'", cname);
  if (!shape_it->is_array()) {
    MOE_CKPT_FAIL(file, "'shape' is a JSON {}, not an array, tensor '{}'", shape_it->type_name(),
                  cname);
  }
  int64_t numel = 1;
  for (const json& dim : *shape_it) {
    uint64_t d = 0;
    if (!as_count(dim, &d)) {
      MOE_CKPT_FAIL(file, "shape has an entry that is not a non-negative integer, tensor '{}'",
                    cname);
    }
    if (__builtin_mul_overflow(numel, static_cast<int64_t>(d), &numel)) {
      MOE_CKPT_FAIL(file, "shape's element count overflows 64 bits, tensor '{}'", cname);
    }
    t.shape.push_back(static_cast<int64_t>(d));
  }
  t.numel = numel;

  const auto off_it = entry.find("data_offsets");
  if (off_it == entry.end()) {
    MOE_CKPT_FAIL(file, "header entry has no 'data_offsets', tensor '{}'", cname);
  }
  uint64_t begin = 0, end = 0;
  if (!off_it->is_array() || off_it->size() != 2 || !as_count((*off_it)[0], &begin) ||
      !as_count((*off_it)[1], &end)) {
    MOE_CKPT_FAIL(
        file, "'data_offsets' is not [begin, end] with non-negative integers, tensor '{}'", cname);
  }
  if (begin > end) {
    MOE_CKPT_FAIL(file, "data_offsets [{}, {}] have begin > end, tensor '{}'", begin, end, cname);
  }
  if (end > data_size_bytes) {
    MOE_CKPT_FAIL(file,
                  "data_offsets [{}, {}] run past the end of the data buffer ({} bytes; file "
                  "truncated?), tensor '{}'",
                  begin, end, data_size_bytes, cname);
  }
  int64_t expected_bytes = 0;
  if (__builtin_mul_overflow(numel, known->size_bytes, &expected_bytes)) {
    MOE_CKPT_FAIL(file, "byte size of {} elements of {} overflows 64 bits, tensor '{}'", numel,
                  dtype, cname);
  }
  if (end - begin != static_cast<uint64_t>(expected_bytes)) {
    MOE_CKPT_FAIL(file,
                  "data_offsets [{}, {}] span {} bytes, but {} elements of {} need {} bytes, "
                  "tensor '{}'",
                  begin, end, end - begin, numel, dtype, expected_bytes, cname);
  }
  t.begin_bytes = begin;
  t.end_bytes = end;
  return t;
}

// Reads exactly `size` bytes at `offset`, or throws.
void pread_all(int fd, uint8_t* dst, uint64_t size, uint64_t offset, const std::string& path) {
  while (size > 0) {
    const ssize_t n = ::pread(fd, dst, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      MOE_CKPT_FAIL(path, "read failed at byte {}: {}", offset,
                    n < 0 ? std::strerror(errno) : "unexpected end of file");
    }
    dst += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

// Owns a file descriptor for the duration of an open.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

uint64_t open_regular(const std::string& path, Fd* fd) {
  fd->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd->fd < 0) MOE_CKPT_FAIL(path, "cannot open: {}", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd->fd, &st) != 0) MOE_CKPT_FAIL(path, "cannot stat: {}", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) MOE_CKPT_FAIL(path, "not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace

int64_t dtype_size_bytes(SafetensorsDtype dtype) {
  return info_of(dtype).size_bytes;
}
std::string_view dtype_name(SafetensorsDtype dtype) {
  return info_of(dtype).name;
}

const SafetensorsTensor* SafetensorsHeader::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors[it->second];
}

SafetensorsHeader parse_safetensors_header(std::string_view text, uint64_t data_size_bytes,
                                           const std::string& file) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    // nlohmann also rejects invalid UTF-8 here, which the format requires.
    MOE_CKPT_FAIL(file, "header is not valid JSON: {}", clip(e.what()));
  }
  if (!root.is_object()) {
    MOE_CKPT_FAIL(file, "header is a JSON {}, not a JSON object", root.type_name());
  }

  SafetensorsHeader header;
  header.data_size_bytes = data_size_bytes;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        MOE_CKPT_FAIL(file, "__metadata__ is a JSON {}, not an object of strings",
                      value.type_name());
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          MOE_CKPT_FAIL(file, "__metadata__ value of key '{}' is a JSON {}, not a string",
                        clip(mkey), mvalue.type_name());
        }
        header.metadata.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(parse_entry(key, value, data_size_bytes, file));
  }

  // The tensors must tile the data buffer: sorted by offset, each starts where the last ended.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              return std::tie(a.begin_bytes, a.end_bytes, a.name) <
                     std::tie(b.begin_bytes, b.end_bytes, b.name);
            });
  uint64_t covered = 0;
  const SafetensorsTensor* prev = nullptr;
  for (const SafetensorsTensor& t : header.tensors) {
    if (t.begin_bytes < covered) {
      MOE_CKPT_FAIL(file, "data_offsets [{}, {}] overlap tensor '{}' at [{}, {}], tensor '{}'",
                    t.begin_bytes, t.end_bytes, clip(prev->name), prev->begin_bytes,
                    prev->end_bytes, clip(t.name));
    }
    if (t.begin_bytes > covered) {
      if (prev == nullptr) {
        MOE_CKPT_FAIL(file,
                      "gap of {} bytes at the start of the data buffer (first tensor begins at "
                      "{}), tensor '{}'",
                      t.begin_bytes, t.begin_bytes, clip(t.name));
      }
      MOE_CKPT_FAIL(file, "gap of {} bytes between tensor '{}' (ends at {}) and tensor '{}'",
                    t.begin_bytes - covered, clip(prev->name), covered, clip(t.name));
    }
    covered = t.end_bytes;
    prev = &t;
  }
  if (covered != data_size_bytes) {
    if (prev == nullptr) {
      MOE_CKPT_FAIL(file, "data buffer holds {} bytes but the header lists no tensors",
                    data_size_bytes);
    }
    MOE_CKPT_FAIL(file,
                  "gap of {} trailing bytes: the data buffer holds {} bytes but the last tensor "
                  "ends at {}, tensor '{}'",
                  data_size_bytes - covered, data_size_bytes, covered, clip(prev->name));
  }

  header.index_.reserve(header.tensors.size());
  for (size_t i = 0; i < header.tensors.size(); ++i)
    header.index_.emplace(header.tensors[i].name, i);
  return header;
}

SafetensorsHeader parse_safetensors_image(std::span<const uint8_t> image, const std::string& file) {
  const uint64_t length = image.size() >= 8 ? read_le_u64(image.data()) : 0;
  const uint64_t data_size = check_header_length(image.size(), length, file);
  const std::string_view text(reinterpret_cast<const char*>(image.data()) + 8, length);
  return parse_safetensors_header(text, data_size, file);
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  Fd fd;
  const uint64_t file_size = open_regular(path, &fd);
  uint8_t prefix[8] = {};
  if (file_size >= 8) pread_all(fd.fd, prefix, 8, 0, path);
  const uint64_t length = file_size >= 8 ? read_le_u64(prefix) : 0;
  const uint64_t data_size = check_header_length(file_size, length, path);
  std::string text(length, '\0');
  pread_all(fd.fd, reinterpret_cast<uint8_t*>(text.data()), length, 8, path);
  return parse_safetensors_header(text, data_size, path);
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  Fd fd;
  const uint64_t file_size = open_regular(path, &fd);
  SafetensorsFile f;
  f.path_ = path;
  // Lengths are checked before mapping: mmap of an empty file fails, and a short file has no
  // length prefix to read.
  uint8_t prefix[8] = {};
  if (file_size >= 8) pread_all(fd.fd, prefix, 8, 0, path);
  const uint64_t length = file_size >= 8 ? read_le_u64(prefix) : 0;
  const uint64_t data_size = check_header_length(file_size, length, path);

  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (map == MAP_FAILED)
    MOE_CKPT_FAIL(path, "mmap of {} bytes failed: {}", file_size, std::strerror(errno));
  f.map_ = static_cast<const std::byte*>(map);
  f.size_bytes_ = file_size;
  f.data_begin_bytes_ = 8 + length;
  // On a throw below, f's destructor unmaps.
  const std::string_view text(reinterpret_cast<const char*>(f.map_) + 8, length);
  f.header_ = parse_safetensors_header(text, data_size, path);
  // The header's pages are not needed again; tensor pages are faulted in on demand.
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  reset();
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      header_(std::move(other.header_)),
      map_(std::exchange(other.map_, nullptr)),
      size_bytes_(std::exchange(other.size_bytes_, 0)),
      data_begin_bytes_(std::exchange(other.data_begin_bytes_, 0)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    reset();
    path_ = std::move(other.path_);
    header_ = std::move(other.header_);
    map_ = std::exchange(other.map_, nullptr);
    size_bytes_ = std::exchange(other.size_bytes_, 0);
    data_begin_bytes_ = std::exchange(other.data_begin_bytes_, 0);
  }
  return *this;
}

void SafetensorsFile::reset() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), size_bytes_);
  map_ = nullptr;
  size_bytes_ = 0;
}

std::span<const std::byte> SafetensorsFile::data(const SafetensorsTensor& tensor) const {
  // Holds for every tensor of header_ (validated); guards against a tensor of another file.
  MOE_CHECK_AS("checkpoint",
               map_ != nullptr && tensor.begin_bytes <= tensor.end_bytes &&
                   tensor.end_bytes <= size_bytes_ - data_begin_bytes_,
               "{}: tensor '{}' is not inside this file's data buffer", path_, tensor.name);
  return {map_ + data_begin_bytes_ + tensor.begin_bytes, tensor.size_bytes()};
}

void write_safetensors(const std::string& path, std::span<const SafetensorsTensorView> tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const SafetensorsTensorView& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const uint64_t size = static_cast<uint64_t>(numel * dtype_size_bytes(t.dtype));
    MOE_CHECK_AS("io", size == t.bytes.size(),
                 "{}: tensor '{}' has {} bytes, but {} elements of {} need {}", path, t.name,
                 t.bytes.size(), numel, dtype_name(t.dtype), size);
    MOE_CHECK_AS("io", !header.contains(t.name) && t.name != "__metadata__",
                 "{}: tensor name '{}' is used twice or reserved", path, t.name);
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';  // aligns the data buffer, as other writers do

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  MOE_CHECK_AS("io", out.good(), "{}: cannot open for writing: {}", path, std::strerror(errno));
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));
  out.write(reinterpret_cast<const char*>(length), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const SafetensorsTensorView& t : tensors) {
    out.write(reinterpret_cast<const char*>(t.bytes.data()),
              static_cast<std::streamsize>(t.bytes.size()));
  }
  out.close();
  MOE_CHECK_AS("io", !out.fail(), "{}: write failed", path);
}

}  // namespace moe::runtime
