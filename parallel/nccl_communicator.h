// NCCL communicator: all_to_all_v on device buffers through grouped ncclSend/ncclRecv on its own
// stream, ordered against the compute stream (Communicator::bind_compute_stream) with events;
// every host-memory collective goes to an MPI communicator it owns. Bootstrapped by an MPI
// broadcast of the ncclUniqueId. all_to_all_v returns once the exchange completed on the device,
// polled (cudaEventQuery + ncclCommGetAsyncError) against CommOptions.timeout_s; on timeout or
// async error the NCCL communicator is aborted, so no rank hangs. Built only with CUDA
// (MOE_EP_HAVE_NCCL).
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace moe::parallel {

// MPI must be initialised. The GPU is `device` modulo the visible device count (pass the
// node-local rank, as the CUDA backend does); device < 0 takes the node-local rank itself.
std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions& options, int device);

}  // namespace moe::parallel
