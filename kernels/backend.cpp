// Backend factory: "cpu" always (fp32, or bf16 compute on request); "cuda" only in builds with
// the CUDA backend (bf16 compute only). Compute-dtype names are parsed here, once.
#include "kernels/backend.h"

#include "kernels/common/check.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef MOE_EP_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moe::kernels {

ComputeDtype parse_compute_dtype(const std::string& text) {
  if (text == "fp32") return ComputeDtype::kF32;
  if (text == "bf16") return ComputeDtype::kBF16;
  MOE_THROW("config", "unknown compute dtype '{}' (expected fp32 or bf16)", text);
}

BackendKind parse_backend_kind(const std::string& text) {
  if (text == "cpu") return BackendKind::kCpu;
  if (text == "cuda") return BackendKind::kCuda;
  MOE_THROW("config", "unknown backend '{}' (expected cpu or cuda)", text);
}

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  if (options.kind == BackendKind::kCpu) {
    return make_cpu_backend(options.compute_dtype.value_or(ComputeDtype::kF32));
  }
  {
    MOE_CHECK_AS("config",
                 options.compute_dtype.value_or(ComputeDtype::kBF16) == ComputeDtype::kBF16,
                 "--backend cuda computes in bf16 only (its GEMMs take bf16 operands); drop "
                 "--compute-dtype fp32 or use --backend cpu");
#ifdef MOE_EP_HAVE_CUDA
    return make_cuda_backend(options.local_rank);
#else
    MOE_THROW("backend",
              "--backend cuda: this moe-ep was built without CUDA (configure with "
              "-DMOE_EP_CUDA=ON on a machine with nvcc)");
#endif
  }
}

std::unique_ptr<Backend> make_backend(const std::string& name, int local_rank) {
  BackendOptions options;
  options.kind = parse_backend_kind(name);
  options.local_rank = local_rank;
  return make_backend(options);
}

}  // namespace moe::kernels
