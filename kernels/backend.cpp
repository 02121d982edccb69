// Backend factory: "cpu" always; "cuda" only in builds with the CUDA backend.
#include "kernels/backend.h"

#include "kernels/common/check.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef MOE_EP_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moe::kernels {

bool cuda_available_in_build() {
#ifdef MOE_EP_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name, int local_rank) {
  if (name == "cpu") return make_cpu_backend();
  if (name == "cuda") {
#ifdef MOE_EP_HAVE_CUDA
    return make_cuda_backend(local_rank);
#else
    (void)local_rank;
    MOE_THROW("backend", "--backend cuda: this moe-ep was built without CUDA (configure with "
                         "-DMOE_EP_CUDA=ON on a machine with nvcc)");
#endif
  }
  MOE_THROW("backend", "unknown backend '{}' (expected cpu or cuda)", name);
}

}  // namespace moe::kernels
