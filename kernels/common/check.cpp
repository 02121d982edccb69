// Error construction: formats "what()" once so every catch site prints the same line.
#include "kernels/common/check.h"

#include <atomic>
#include <cstring>

namespace moe {
namespace {
std::atomic<int> g_error_rank{-1};

const char* base_name(const char* path) {
  // Keep the path from the project root (runtime/x.cpp), not the build machine's absolute path.
  for (const char* dir :
       {"/runtime/", "/parallel/", "/kernels/", "/launch/", "/tests/", "/bench/"}) {
    if (const char* p = std::strstr(path, dir)) return p + 1;
  }
  return path;
}
}  // namespace

void set_error_rank(int rank) {
  g_error_rank.store(rank);
}
int error_rank() {
  return g_error_rank.load();
}

Error::Error(std::string subsystem, std::string message, const char* file, int line)
    : std::runtime_error(fmt::format("{} (rank {}, {} error at {}:{})", message, error_rank(),
                                     subsystem, base_name(file), line)),
      subsystem_(std::move(subsystem)),
      message_(std::move(message)),
      file_(base_name(file)),
      line_(line),
      rank_(error_rank()) {}

void throw_error(const char* subsystem, std::string message, const char* file, int line) {
  throw Error(subsystem, std::move(message), file, line);
}

}  // namespace moe
