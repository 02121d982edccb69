// The CPU backend: host memory and the ops of kernels/cpu/ops.h behind the Backend interface;
// in bf16 compute mode the rounding ops come from kernels/cpu/bf16_ops.h instead.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace moe::kernels {

std::unique_ptr<Backend> make_cpu_backend(ComputeDtype compute_dtype = ComputeDtype::kF32);

// bf16 mode on the fp32 GEMM path even where oneDNN has a bf16 matmul: lets tests compare the
// two GEMM routes on one machine.
std::unique_ptr<Backend> make_cpu_bf16_fallback_backend();

}  // namespace moe::kernels
