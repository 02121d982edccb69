// The CPU backend: host memory and the ops of kernels/cpu/ops.h behind the Backend interface.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace moe::kernels {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace moe::kernels
