// Helpers for the config tests: a per-process scratch directory for generated config files and
// a matcher-style check that an Error names the file, the key and the line.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "kernels/common/check.h"
#include "tests/common/expect_error.h"

namespace moe::testing {

inline std::filesystem::path scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() /
             ("moe_test_config_" + std::to_string(static_cast<long>(::getpid())));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

// Writes `text` to scratch_dir()/name and returns the path.
inline std::string write_file(const std::string& name, const std::string& text) {
  auto path = scratch_dir() / name;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

// Runs f, expects a moe::Error of subsystem "config", and returns its what().
inline std::string config_error(const std::function<void()>& f) {
  return moe::test::expect_error("config", f);
}

}  // namespace moe::testing
