// CPU compute ops (fp32 activations, bf16 weights, fp32 accumulation): the fast versions of the
// ops declared in op_signatures.h, with their contracts there. How they are fast: linear with
// rows == 1 is a bf16 GEMV, larger batches convert W in cache-sized blocks and call cblas_sgemm;
// grouped_expert_swiglu gathers each group's rows and runs one GEMM per projection.
#pragma once

#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/op_args.h"

namespace moe::kernels::cpu {

#include "kernels/cpu/op_signatures.h"

}  // namespace moe::kernels::cpu
