// Runs code that must fail with moe::Error of one subsystem (config, checkpoint, ...) and hands
// back the error's text for the test to check; any other outcome is a test failure.
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <string>
#include <string_view>

#include "kernels/common/check.h"

namespace moe::test {

enum class ErrorText { kWhat, kMessage };  // what(): with file:line and rank; message(): bare

template <class F>
std::string expect_error(std::string_view subsystem, F&& f, ErrorText text = ErrorText::kWhat) {
  try {
    f();
  } catch (const moe::Error& e) {
    EXPECT_EQ(e.subsystem(), subsystem) << e.what();
    return text == ErrorText::kWhat ? std::string(e.what()) : std::string(e.message());
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected moe::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected moe::Error, nothing was thrown";
  return "";
}

}  // namespace moe::test
