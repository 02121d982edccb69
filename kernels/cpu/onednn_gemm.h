// bf16 GEMMs through oneDNN's matmul primitive: C [m, n] = A [m, k] . W^T with A and W [n, k]
// bf16 (row-major, W as checkpoints store it), fp32 accumulation, C fp32 or bf16. Primitives are
// created once per (row bucket, n, k, C type) and kept for the object's life; A and C must hold
// padded_rows(m) rows (the rows past m are computed and ignored). Builds without oneDNN, and CPUs
// where oneDNN has no bf16 matmul (before AVX512), report has_bf16_matmul == false.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/common/bf16.h"

namespace moe::kernels::cpu {

struct OnednnInfo {
  bool built_with_onednn = false;
  bool has_bf16_matmul = false;  // oneDNN created a bf16 matmul primitive on this CPU
  std::string isa;               // dnnl::get_effective_cpu_isa(), e.g. "avx512_core_amx"
  std::string probe_impl;        // the implementation oneDNN picked for a probe shape
};

// Probed once per process (thread-safe).
const OnednnInfo& onednn_info();

class OnednnBf16Gemm {
 public:
  OnednnBf16Gemm();  // throws moe::Error when onednn_info().has_bf16_matmul is false
  ~OnednnBf16Gemm();
  OnednnBf16Gemm(const OnednnBf16Gemm&) = delete;
  OnednnBf16Gemm& operator=(const OnednnBf16Gemm&) = delete;

  // The row count a primitive is built for: m itself up to 8, then multiples of 16 up to 256,
  // then of 64 (bounds the number of primitives a varying m creates).
  static int64_t padded_rows(int64_t m);

  // c [padded_rows(m), n] = a [padded_rows(m), k] . w^T, w [n, k]; c is bf16 when c_is_bf16,
  // else fp32. Runs on min(OpenMP max threads, BLAS threads) threads.
  void run(const bf16* a, const bf16* w, int64_t m, int64_t n, int64_t k, void* c, bool c_is_bf16);

  int64_t num_primitives() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::kernels::cpu
