// BLAS thread count for the CPU backend's own code (kernels/cpu/host.h is the public side).
#pragma once

#include "kernels/cpu/host.h"

namespace moe::kernels::cpu {

inline int blas_threads() {
  return host_threads();
}

}  // namespace moe::kernels::cpu
