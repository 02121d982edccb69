// .npy: magic "\x93NUMPY", version 1.0, u16 header length, a Python-dict header padded with
// spaces to a multiple of 64 bytes and ended by '\n', then raw data.
#include "runtime/io/npy.h"

#include <fmt/ranges.h>

#include <fstream>
#include <regex>

#include "kernels/common/check.h"

namespace moe::runtime {

void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape,
                   const std::vector<float>& data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  MOE_CHECK(n == static_cast<int64_t>(data.size()), "npy {}: shape holds {} values, data has {}",
            path, n, data.size());
  std::string dims = fmt::format("{}", fmt::join(shape, ", "));
  if (shape.size() == 1) dims += ",";  // a Python 1-tuple
  std::string header =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  const size_t preamble = 10;
  size_t total = preamble + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  MOE_CHECK_AS("io", out.good(), "cannot open {} for writing", path);
  const char magic[] = "\x93NUMPY\x01\x00";
  out.write(magic, 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.put(static_cast<char>(len & 0xff));
  out.put(static_cast<char>(len >> 8));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()),
            static_cast<std::streamsize>(data.size() * sizeof(float)));
  MOE_CHECK_AS("io", out.good(), "writing {} failed", path);
}

NpyArray read_npy_f32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK_AS("io", in.good(), "{}: cannot open", path);
  char magic[8];
  in.read(magic, 8);
  MOE_CHECK_AS("io", in.good() && std::string(magic, 6) == "\x93NUMPY", "{}: not a .npy file",
               path);
  uint32_t len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(len, '\0');
  in.read(header.data(), len);
  MOE_CHECK_AS("io", in.good(), "{}: truncated header", path);
  MOE_CHECK_AS("io", header.find("'<f4'") != std::string::npos,
               "{}: expected float32 little-endian data ('<f4')", path);
  MOE_CHECK_AS("io", header.find("'fortran_order': False") != std::string::npos,
               "{}: expected C order", path);
  std::smatch m;
  MOE_CHECK_AS("io", std::regex_search(header, m, std::regex("'shape': \\(([^)]*)\\)")),
               "{}: no shape in header", path);
  NpyArray a;
  std::string dims = m[1];
  std::regex num("\\d+");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator();
       ++it) {
    a.shape.push_back(std::stoll(it->str()));
  }
  int64_t n = 1;
  for (int64_t d : a.shape) n *= d;
  a.data.resize(static_cast<size_t>(n));
  in.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(n * sizeof(float)));
  MOE_CHECK_AS("io", in.gcount() == static_cast<std::streamsize>(n * sizeof(float)),
               "{}: truncated data", path);
  return a;
}

}  // namespace moe::runtime
