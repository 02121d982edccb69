// NCCL communicator: all_to_all_v on device buffers through grouped ncclSend/ncclRecv on its own
// stream, ordered against the compute stream with events; every host-memory collective goes to
// an MPI communicator it owns. Bootstrapped by an MPI broadcast of the ncclUniqueId. Waits poll
// (cudaEventQuery + ncclCommGetAsyncError) against CommOptions.timeout_s and abort the NCCL
// communicator on timeout or async error, so no rank hangs. Built only with CUDA
// (MOE_EP_HAVE_NCCL).
#pragma once

#include <memory>

#include "parallel/communicator.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace moe::parallel {

class NcclCommunicator : public Communicator {
 public:
  // The stream the data of all_to_all_v is produced and consumed on (the CUDA backend's
  // stream()). Until one is set the communicator synchronises the device before each exchange.
  virtual void set_compute_stream(CUstream_st* stream) = 0;
  virtual int device() const = 0;
  // host_wait = true (default): all_to_all_v returns once the exchange completed on the device
  // (polled against the timeout). false: it returns once enqueued; the compute stream waits for
  // it on the device and the next exchange, wait() or shutdown() polls it against the timeout.
  virtual void set_host_wait(bool host_wait) = 0;
  virtual void wait() = 0;
};

// MPI must be initialised. The GPU is `device` modulo the visible device count (pass the
// node-local rank, as the CUDA backend does); device < 0 takes the node-local rank itself.
std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions& options, int device);

// The NCCL communicator behind `comm`, or nullptr.
NcclCommunicator* as_nccl_communicator(Communicator* comm);

}  // namespace moe::parallel
