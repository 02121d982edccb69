// Fp8Gemm (fp8_gemm.h). The cuBLASLt call in column-major terms: D [out, rows] = A^T B with A the
// weight ([in, out] column-major = the checkpoint's [out, in] row-major, scales BLK128x128_32F in
// the checkpoint's [ceil(out / 128), ceil(in / 128)] row-major layout) and B the quantised
// activations ([in, rows] column-major, scales VEC128_32F [ceil(in / 128), rows], row index
// fastest), fp32 accumulation and fp32 D. The algorithm is asked of the heuristic once per shape;
// a shape it has none for (or another GPU) takes the dequantise path.
#include "kernels/cuda/fp8_gemm.h"

#include <cublasLt.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include "kernels/common/check.h"
#include "kernels/common/fp8.h"
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/fused_math.h"

namespace moe::kernels::cuda {
namespace {

int as_int(int64_t v, const char* what) {
  MOE_CHECK_AS("cuda", v >= 0 && v <= INT_MAX, "{} = {} does not fit cuBLAS's int", what, v);
  return static_cast<int>(v);
}

size_t align256(size_t n) {
  return (n + 255) / 256 * 256;
}

}  // namespace

void gemm_bf16(cublasHandle_t cublas, const bf16* w, const bf16* xb, int64_t rows, int64_t in,
               int64_t out, void* y, cudaDataType_t y_type) {
  const float alpha = 1.0f, beta = 0.0f;
  MOE_CUBLAS_CHECK(cublasGemmEx(
      cublas, CUBLAS_OP_T, CUBLAS_OP_N, as_int(out, "out"), as_int(rows, "rows"), as_int(in, "in"),
      &alpha, w, CUDA_R_16BF, as_int(in, "in"), xb, CUDA_R_16BF, as_int(in, "in"), &beta, y, y_type,
      as_int(out, "out"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// cuBLASLt handle, per-shape descriptors and algorithms.
struct Fp8Gemm::Lt {
  struct Shape {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  cublasLtHandle_t handle = nullptr;
  bool available = false;  // this GPU and cuBLAS have the block-scaled modes, and not turned off
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::map<std::tuple<int64_t, int64_t, int64_t>, Shape> shapes;

  ~Lt() {
    for (auto& [key, s] : shapes) {
      if (s.desc != nullptr) (void)cublasLtMatmulDescDestroy(s.desc);
      for (cublasLtMatrixLayout_t l : {s.a, s.b, s.d}) {
        if (l != nullptr) (void)cublasLtMatrixLayoutDestroy(l);
      }
    }
    if (handle != nullptr) (void)cublasLtDestroy(handle);
  }

  // The descriptors and algorithm of one shape (asked of the heuristic on first use).
  Shape& shape(int64_t rows, int64_t in, int64_t out) {
    auto [it, fresh] = shapes.try_emplace({rows, in, out});
    Shape& s = it->second;
    if (!fresh) return s;
#if CUBLAS_VERSION >= 120900
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    MOE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&s.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    MOE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    MOE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    MOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                                                    &a_mode, sizeof(a_mode)));
    MOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                                                    &b_mode, sizeof(b_mode)));
    MOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&s.a, CUDA_R_8F_E4M3, static_cast<uint64_t>(in),
                                                static_cast<uint64_t>(out), in));
    MOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&s.b, CUDA_R_8F_E4M3, static_cast<uint64_t>(in),
                                                static_cast<uint64_t>(rows), in));
    MOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&s.d, CUDA_R_32F, static_cast<uint64_t>(out),
                                                static_cast<uint64_t>(rows), out));
    cublasLtMatmulPreference_t pref = nullptr;
    MOE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    MOE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t rc = cublasLtMatmulAlgoGetHeuristic(handle, s.desc, s.a, s.b, s.d, s.d,
                                                             pref, 1, &result, &found);
    (void)cublasLtMatmulPreferenceDestroy(pref);
    s.ok = rc == CUBLAS_STATUS_SUCCESS && found > 0;
    if (s.ok) s.algo = result.algo;
#else
    (void)rows, (void)in, (void)out;
#endif
    return s;
  }
};

Fp8Gemm::Fp8Gemm(int device, cudaStream_t stream, cublasHandle_t cublas, void* workspace,
                 size_t workspace_bytes, ScratchFn scratch)
    : stream_(stream), cublas_(cublas), scratch_(std::move(scratch)), lt_(std::make_unique<Lt>()) {
  int major = 0, minor = 0;
  MOE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  MOE_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  const char* env = std::getenv("MOE_EP_CUDA_FP8_GEMM");
  const bool off = env != nullptr && std::strcmp(env, "dequant") == 0;
  lt_->available = CUBLAS_VERSION >= 120900 && major == 9 && minor == 0 && !off;
  lt_->workspace = workspace;
  lt_->workspace_bytes = workspace_bytes;
  if (lt_->available) MOE_CUBLAS_CHECK(cublasLtCreate(&lt_->handle));
}

Fp8Gemm::~Fp8Gemm() = default;

bool Fp8Gemm::uses_block_scaled_gemm(int64_t rows, int64_t in, int64_t out) {
  // Whole 128-column groups, scale rows of 16-byte multiples, 16-element aligned output rows.
  if (!lt_->available || rows <= 0 || in % kFp8Block != 0 || fp8_num_blocks(in) % 4 != 0 ||
      out % 16 != 0) {
    return false;
  }
  return lt_->shape(rows, in, out).ok;
}

void Fp8Gemm::linear(WeightView w, const float* x, const bf16* x_bf16, int64_t rows, int64_t in,
                     int64_t out, float* y) {
  MOE_CHECK(w.is_e4m3(), "Fp8Gemm::linear: weight is not e4m3");
  if (rows <= 0 || out <= 0) return;
  if (rows <= kExpertSmallMaxRows && linear_small_shape_ok(in)) {
    MOE_CUDA_CHECK(launch_linear_small(x, x_bf16, w, in, out, rows, y, stream_));
    return;
  }
  if (uses_block_scaled_gemm(rows, in, out)) {
#if CUBLAS_VERSION >= 120900
    const size_t q_bytes = align256(static_cast<size_t>(rows * in));
    auto* s = static_cast<unsigned char*>(
        scratch_(q_bytes + static_cast<size_t>(fp8_num_blocks(in) * rows) * sizeof(float)));
    auto* xq = reinterpret_cast<uint8_t*>(s);
    auto* xs = reinterpret_cast<float*>(s + q_bytes);
    MOE_CUDA_CHECK(launch_quantise_rows_e4m3(x, x_bf16, rows, in, xq, xs, stream_));
    Lt::Shape& sh = lt_->shape(rows, in, out);
    const void* a_scale = w.scales;
    const void* b_scale = xs;
    MOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(sh.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                                                    &a_scale, sizeof(a_scale)));
    MOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(sh.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                                                    &b_scale, sizeof(b_scale)));
    const float alpha = 1.0f, beta = 0.0f;
    MOE_CUBLAS_CHECK(cublasLtMatmul(lt_->handle, sh.desc, &alpha, w.data, sh.a, xq, sh.b, &beta, y,
                                    sh.d, y, sh.d, &sh.algo, lt_->workspace, lt_->workspace_bytes,
                                    stream_));
    return;
#endif
  }
  const size_t w_bytes = align256(static_cast<size_t>(out * in) * sizeof(bf16));
  auto* s = static_cast<unsigned char*>(
      scratch_(w_bytes + (x_bf16 == nullptr ? static_cast<size_t>(rows * in) * sizeof(bf16) : 0)));
  auto* wb = reinterpret_cast<bf16*>(s);
  MOE_CUDA_CHECK(launch_dequantise_e4m3(w, out, in, wb, stream_));
  const bf16* xb = x_bf16;
  if (xb == nullptr) {
    auto* conv = reinterpret_cast<bf16*>(s + w_bytes);
    MOE_CUDA_CHECK(launch_f32_to_bf16(x, rows * in, conv, stream_));
    xb = conv;
  }
  gemm_bf16(cublas_, wb, xb, rows, in, out, y, CUDA_R_32F);
}

void Fp8Gemm::dequantise(WeightView w, int64_t rows, int64_t cols, bf16* out) {
  MOE_CUDA_CHECK(launch_dequantise_e4m3(w, rows, cols, out, stream_));
}

void Fp8Gemm::dequantise_groups(ExpertGroup* groups, int64_t n, int64_t hidden, int64_t inter) {
  const size_t matrix_bytes = align256(static_cast<size_t>(hidden * inter) * sizeof(bf16));
  auto* s = static_cast<unsigned char*>(scratch_(static_cast<size_t>(3 * n) * matrix_bytes));
  for (int64_t g = 0; g < n; ++g) {
    WeightView* parts[3] = {&groups[g].weights.gate, &groups[g].weights.up,
                            &groups[g].weights.down};
    for (int p = 0; p < 3; ++p) {
      if (!parts[p]->is_e4m3()) continue;
      auto* dst = reinterpret_cast<bf16*>(s + static_cast<size_t>(3 * g + p) * matrix_bytes);
      const int64_t rows = p == 2 ? hidden : inter;
      dequantise(*parts[p], rows, hidden * inter / rows, dst);
      *parts[p] = WeightView(dst);
    }
  }
}

}  // namespace moe::kernels::cuda
