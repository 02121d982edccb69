// The CUDA backend's GEMMs with e4m3 weights (128 x 128 block scales, op_args.h WeightView):
//   few rows      the fused dequantise-and-multiply kernel (launch_linear_small): each weight
//                 byte read once from HBM, as bf16 operands, fp32 accumulation;
//   more rows     cuBLASLt's block-scaled FP8 GEMM where it has one (cuBLAS >= 12.9 on compute
//                 capability 9.0: activations quantised in 1 x 128 groups, weights as stored);
//   otherwise     the weight dequantised to bf16 in scratch, then the bf16 cuBLAS GEMM.
// MOE_EP_CUDA_FP8_GEMM=dequant turns the cuBLASLt path off (to compare the two). Host code.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "kernels/op_args.h"

namespace moe::kernels::cuda {

// y [rows, out] = xb [rows, in] . w^T, w [out, in] bf16 row-major; y of type y_type (fp32 or
// bf16); fp32 accumulation (cublasGemmEx).
void gemm_bf16(cublasHandle_t cublas, const bf16* w, const bf16* xb, int64_t rows, int64_t in,
               int64_t out, void* y, cudaDataType_t y_type);

class Fp8Gemm {
 public:
  // Device scratch of at least n bytes, in stream order, that no caller of Fp8Gemm holds.
  using ScratchFn = std::function<void*(size_t size_bytes)>;

  Fp8Gemm(int device, cudaStream_t stream, cublasHandle_t cublas, void* workspace,
          size_t workspace_bytes, ScratchFn scratch);
  ~Fp8Gemm();
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;

  // y [rows, out] (fp32) = x . w^T, w e4m3. x: fp32 (nullable) and/or its bf16 copy (nullable);
  // the bf16 paths read x_bf16 when given (rounding.h: the GEMM's input is bf16(x)).
  void linear(WeightView w, const float* x, const bf16* x_bf16, int64_t rows, int64_t in,
              int64_t out, float* y);
  // out [rows, cols] = bf16 values of an e4m3 w (for the grouped bf16 GEMM of large batches).
  void dequantise(WeightView w, int64_t rows, int64_t cols, bf16* out);
  // Replaces the e4m3 weights of expert groups [0, n) by bf16 copies in scratch (valid until the
  // next use of it), for the grouped bf16 GEMM of large batches.
  void dequantise_groups(ExpertGroup* groups, int64_t n, int64_t hidden, int64_t inter);
  // Whether linear() of these sizes runs the cuBLASLt block-scaled GEMM.
  bool uses_block_scaled_gemm(int64_t rows, int64_t in, int64_t out);

 private:
  struct Lt;
  cudaStream_t stream_;
  cublasHandle_t cublas_;
  ScratchFn scratch_;
  std::unique_ptr<Lt> lt_;
};

}  // namespace moe::kernels::cuda
