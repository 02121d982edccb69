// make_communicator: the one place that knows which transports this build has.
#include "kernels/common/check.h"
#include "parallel/communicator.h"
#ifdef MOE_EP_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace moe::parallel {

std::unique_ptr<Communicator> make_communicator(const std::string& name,
                                                const CommOptions& options) {
  if (name == "mpi") return make_mpi_communicator(options);
  if (name == "nccl") {
#ifdef MOE_EP_HAVE_NCCL
    return make_nccl_communicator(options, /*device=*/-1);  // the node-local rank's GPU
#else
    MOE_THROW("config",
              "--comm nccl: this moe-ep was built without NCCL (configure with "
              "-DMOE_EP_CUDA=ON on a machine with nvcc)");
#endif
  }
  MOE_THROW("config", "unknown communicator '{}' (expected mpi or nccl)", name);
}

}  // namespace moe::parallel
