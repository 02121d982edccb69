// NcclCommunicatorImpl (see nccl_communicator.h). Ordering of one exchange (all_to_all_v or
// fixed blocks), started by start_*() and completed by wait():
//
//   compute stream: ... producer kernels ── record ready_ ─────────────── wait done ── consumers
//   comm stream:                 wait ready_ ── self copy ── ncclGroup{Send/Recv} ── record done
//
// Each started exchange records its own `done` event (from a pool), so that several can be in
// flight while the compute stream goes on; wait() polls the host on it (errors and timeouts).
// The NCCL communicator is nonblocking (ncclConfig_t.blocking = 0): every NCCL call may return
// ncclInProgress and is completed by polling ncclCommGetAsyncError against the deadline. On a
// failed call, a timeout or an async error the communicator is aborted (ncclCommAbort, local;
// a group the failure interrupted is ended first) and moe::Error thrown; afterwards every call
// throws. Host collectives are delegated to the host communicator (MPI, or the one-rank
// communicator in a process started without a launcher).
#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/cuda/cuda_raii.h"
#include "parallel/nccl_plan.h"

namespace moe::parallel {
namespace {

// Owns an ncclComm_t; releasing it without a collective means ncclCommAbort (local).
class NcclCommOwner {
 public:
  NcclCommOwner() = default;
  ~NcclCommOwner() { abort(); }
  NcclCommOwner(const NcclCommOwner&) = delete;
  NcclCommOwner& operator=(const NcclCommOwner&) = delete;
  ncclComm_t get() const { return comm_; }
  ncclComm_t* out() { return &comm_; }
  void abort() noexcept {
    if (comm_ != nullptr) (void)ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  // After ncclCommDestroy succeeded.
  void release() noexcept { comm_ = nullptr; }

 private:
  ncclComm_t comm_ = nullptr;
};

class NcclCommunicatorImpl final : public Communicator {
 public:
  NcclCommunicatorImpl(const CommOptions& options, int device)
      : options_(options), owned_host_(make_host_communicator(options)), mpi_(owned_host_.get()) {
    MOE_CHECK_AS("nccl", options_.timeout_s > 0, "collective timeout must be > 0 s, got {}",
                 options_.timeout_s);
    rank_ = mpi_->rank();
    size_ = mpi_->size();
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      (void)cudaGetLastError();
      count = 0;
    }
    MOE_CHECK_AS("nccl", count > 0, "--comm nccl on rank {}: no CUDA device is visible", rank_);
    // Same rule as the CUDA backend (local_rank % count), so both pick the same GPU.
    device_ = (device >= 0 ? device : mpi_->local_rank()) % count;
    MOE_CUDA_CHECK(cudaSetDevice(device_));
    comm_stream_ = kernels::cuda::Stream::create_non_blocking();
    ready_ = kernels::cuda::Event::create();

    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (rank_ == 0) MOE_NCCL_CHECK(ncclGetUniqueId(&id));
    mpi_->broadcast(std::span<ncclUniqueId>(&id, 1), 0);

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    MOE_NCCL_CHECK(ncclCommInitRankConfig(comm_.out(), size_, id, rank_, &config));
    wait_nccl_idle("ncclCommInitRankConfig");
  }

  // The node's part of `parent` (ncclCommSplit by node), with `host` (the parent's host
  // communicator's node communicator) for the host collectives; same device as the parent.
  NcclCommunicatorImpl(const CommOptions& options, NcclCommunicatorImpl& parent, Communicator& host)
      : options_(options),
        mpi_(&host),
        rank_(host.rank()),
        size_(host.size()),
        device_(parent.device_) {
    MOE_CUDA_CHECK(cudaSetDevice(device_));
    comm_stream_ = kernels::cuda::Stream::create_non_blocking();
    ready_ = kernels::cuda::Event::create();
    compute_stream_ = parent.compute_stream_;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const NodeLayout& layout = parent.node_layout();
    MOE_NCCL_CHECK(
        ncclCommSplit(parent.comm_.get(), layout.node, layout.local_rank, comm_.out(), &config));
    wait_nccl_idle("ncclCommSplit");
  }

  // No collective in the destructor: a communicator not shut down is aborted (local) by comm_.
  ~NcclCommunicatorImpl() override = default;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const NodeLayout& node_layout() const override { return mpi_->node_layout(); }
  // Split by node on the first call (collective; the host communicator splits alongside).
  Communicator& node_communicator() override {
    if (node_layout().num_nodes == 1) return *this;
    if (node_ == nullptr) {
      ensure_usable("node_communicator");
      node_ = std::make_unique<NcclCommunicatorImpl>(options_, *this, mpi_->node_communicator());
    }
    return *node_;
  }
  // Until a stream is bound the communicator synchronises the device before each exchange.
  void bind_compute_stream(void* stream) override {
    compute_stream_ = static_cast<cudaStream_t>(stream);
    if (node_ != nullptr) node_->bind_compute_stream(stream);
  }
  std::string name() const override { return "nccl"; }
  bool device_buffers() const override { return true; }

  void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) override {
    mpi_->all_to_all(send, recv);
  }
  void barrier() override { mpi_->barrier(); }

  [[noreturn]] void abort(const std::string& reason, int exit_code) override {
    comm_.abort();
    mpi_->abort(reason, exit_code);
    MOE_THROW("nccl", "abort of the MPI communicator returned");  // not reached
  }

  void shutdown() override {
    if (shut_down_) return;
    shut_down_ = true;
    if (node_ != nullptr) node_->shutdown();
    if (comm_.get() != nullptr && failed_.empty()) {
      while (!pending_.empty()) wait(pending_.begin()->first);
      MOE_NCCL_CHECK(ncclCommFinalize(comm_.get()));  // flushes outstanding work
      wait_nccl_idle("ncclCommFinalize");
      MOE_NCCL_CHECK(ncclCommDestroy(comm_.get()));
      comm_.release();
    }
    if (owned_host_ != nullptr) owned_host_->shutdown();  // a node's host part: its parent's
  }

 protected:
  ExchangeId start_all_to_all_v_raw(const void* send, size_t send_size, const int64_t* send_counts,
                                    void* recv, size_t recv_size, const int64_t* recv_counts,
                                    size_t elem_bytes) override {
    ensure_usable("all_to_all_v");
    return enqueue(
        plan_all_to_all_v(rank_, size_, send_counts, send_size, recv_counts, recv_size, elem_bytes),
        send, recv, "all_to_all_v");
  }

  ExchangeId start_all_to_all_blocks_raw(const void* send, const int64_t* send_bytes, void* recv,
                                         int64_t block_bytes) override {
    ensure_usable("all_to_all_blocks");
    return enqueue(plan_all_to_all_blocks(rank_, size_, send_bytes, block_bytes), send, recv,
                   "all_to_all_blocks");
  }

  void wait(ExchangeId id) override {
    auto it = pending_.find(id);
    MOE_CHECK_AS("nccl", it != pending_.end(), "wait: exchange {} is not pending on rank {}", id,
                 rank_);
    Pending p = std::move(it->second);
    pending_.erase(it);
    if (p.done.get() == nullptr) return;  // nothing was enqueued
    wait_event(p.done.get(), p.op);
    free_events_.push_back(std::move(p.done));
  }

  void all_reduce_raw(void* data, size_t count, ScalarType type, ReduceOp op) override {
    switch (type) {
      case ScalarType::kI32:
        return mpi_->all_reduce(std::span<int32_t>(static_cast<int32_t*>(data), count), op);
      case ScalarType::kI64:
        return mpi_->all_reduce(std::span<int64_t>(static_cast<int64_t*>(data), count), op);
      case ScalarType::kF32:
        return mpi_->all_reduce(std::span<float>(static_cast<float*>(data), count), op);
      case ScalarType::kF64:
        return mpi_->all_reduce(std::span<double>(static_cast<double*>(data), count), op);
    }
    MOE_THROW("comm", "all_reduce: unknown scalar type {}", static_cast<int>(type));
  }
  void broadcast_raw(void* data, size_t size_bytes, int root) override {
    mpi_->broadcast(std::span<unsigned char>(static_cast<unsigned char*>(data), size_bytes), root);
  }
  void all_gather_raw(const void* send, size_t send_bytes, void* recv, size_t recv_bytes) override {
    mpi_->all_gather(
        std::span<const unsigned char>(static_cast<const unsigned char*>(send), send_bytes),
        std::span<unsigned char>(static_cast<unsigned char*>(recv), recv_bytes));
  }
  void gather_v_raw(const void* send, size_t send_size, void* recv, size_t recv_size,
                    const int64_t* recv_counts, size_t elem_bytes, int root) override {
    std::vector<int64_t> byte_counts;
    if (rank_ == root) {
      byte_counts.resize(static_cast<size_t>(size_));
      for (int r = 0; r < size_; ++r) {
        byte_counts[r] = recv_counts[r] * static_cast<int64_t>(elem_bytes);
      }
    }
    mpi_->gather_v(
        std::span<const unsigned char>(static_cast<const unsigned char*>(send),
                                       send_size * elem_bytes),
        std::span<unsigned char>(static_cast<unsigned char*>(recv), recv_size * elem_bytes),
        std::span<const int64_t>(byte_counts), root);
  }

 private:
  struct Pending {
    kernels::cuda::Event done;  // null when the exchange moved nothing
    std::string op;
  };

  // Orders the comm stream after the compute stream's producers, enqueues the plan's copy and
  // group, records its done event and makes the compute stream's consumers wait for it.
  ExchangeId enqueue(const AllToAllPlan& plan, const void* send, void* recv, const char* op) {
    const ExchangeId id = next_id_++;
    Pending& p = pending_[id];
    p.op = op;
    if (plan.empty()) return id;
    const auto* src = static_cast<const unsigned char*>(send);
    auto* dst = static_cast<unsigned char*>(recv);
    if (compute_stream_ != nullptr) {
      MOE_CUDA_CHECK(cudaEventRecord(ready_.get(), compute_stream_));
      MOE_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_.get(), ready_.get(), 0));
    } else {
      MOE_CUDA_CHECK(cudaDeviceSynchronize());  // producer stream unknown: wait for all of it
    }
    if (plan.self_bytes > 0) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(dst + plan.self_recv_offset_bytes,
                                     src + plan.self_send_offset_bytes, plan.self_bytes,
                                     cudaMemcpyDeviceToDevice, comm_stream_.get()));
    }
    if (!plan.sends.empty() || !plan.recvs.empty()) {
      // A failure inside the group ends the group first (issue_group), then fail() aborts the
      // communicator and throws: no group is left open and no rank waits on a half-issued one.
      const auto code = [](ncclResult_t rc) {
        return rc == ncclSuccess || rc == ncclInProgress ? 0 : static_cast<int>(rc);
      };
      const GroupIssue issue =
          issue_group(plan, {[&] { return code(ncclGroupStart()); },
                             [&](const PeerTransfer& t) {
                               return code(ncclSend(src + t.offset_bytes, t.size_bytes, ncclUint8,
                                                    t.peer, comm_.get(), comm_stream_.get()));
                             },
                             [&](const PeerTransfer& t) {
                               return code(ncclRecv(dst + t.offset_bytes, t.size_bytes, ncclUint8,
                                                    t.peer, comm_.get(), comm_stream_.get()));
                             },
                             [&] { return code(ncclGroupEnd()); }});
      if (!issue.ok()) {
        fail(std::string(op) + " (" + issue.call + ")", static_cast<ncclResult_t>(issue.result));
      }
      wait_nccl_idle(std::string(op) + " (enqueue)");
    }
    if (free_events_.empty()) free_events_.push_back(kernels::cuda::Event::create());
    p.done = std::move(free_events_.back());
    free_events_.pop_back();
    MOE_CUDA_CHECK(cudaEventRecord(p.done.get(), comm_stream_.get()));
    if (compute_stream_ != nullptr) {
      MOE_CUDA_CHECK(cudaStreamWaitEvent(compute_stream_, p.done.get(), 0));
    }
    return id;
  }

  void ensure_usable(const char* op) {
    MOE_CHECK_AS("nccl", !shut_down_, "{} after shutdown()", op);
    MOE_CHECK_AS("nccl", failed_.empty() && comm_.get() != nullptr,
                 "{}: the NCCL communicator was aborted earlier ({})", op, failed_);
  }

  // Aborts the communicator (local) and throws; the message names the operation and rank.
  [[noreturn]] void fail(const std::string& op, ncclResult_t rc) {
    const char* last = comm_.get() != nullptr ? ncclGetLastError(comm_.get()) : nullptr;
    failed_ = op + ": " + ncclGetErrorString(rc) +
              (last && *last ? std::string(" (") + last + ")" : std::string());
    comm_.abort();
    pending_.clear();
    MOE_THROW("nccl", "{} failed on rank {}", failed_, rank_);
  }

  [[noreturn]] void time_out(const std::string& op, double waited_s) {
    failed_ = op + ": timed out";
    comm_.abort();
    pending_.clear();
    MOE_THROW("nccl",
              "{} did not complete within {:g} s on rank {} (waited {:.3f} s; another rank failed "
              "or is stuck); the NCCL communicator was aborted",
              op, options_.timeout_s, rank_, waited_s);
  }

  ncclResult_t async_state() const {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm_.get(), &state);
    return rc != ncclSuccess ? rc : state;
  }

  // Polls until the nonblocking communicator has finished its last call (ncclSuccess).
  void wait_nccl_idle(const std::string& op) {
    ncclResult_t last = ncclSuccess;
    const WaitOutcome w = wait_with_deadline(
        [&] {
          last = async_state();
          if (last == ncclSuccess) return PollState::kDone;
          return last == ncclInProgress ? PollState::kPending : PollState::kFailed;
        },
        options_.timeout_s);
    if (w.kind == WaitOutcome::Kind::kFailed) fail(op, last);
    if (w.kind == WaitOutcome::Kind::kTimedOut) time_out(op, w.waited_s);
  }

  // Polls until `event` has completed on the device, watching NCCL's async error meanwhile.
  void wait_event(cudaEvent_t event, const std::string& op) {
    ncclResult_t nccl_state = ncclSuccess;
    cudaError_t cuda_state = cudaSuccess;
    const WaitOutcome w = wait_with_deadline(
        [&] {
          cuda_state = cudaEventQuery(event);
          if (cuda_state != cudaSuccess && cuda_state != cudaErrorNotReady) {
            return PollState::kFailed;
          }
          nccl_state = async_state();
          if (nccl_state != ncclSuccess && nccl_state != ncclInProgress) {
            return PollState::kFailed;
          }
          return cuda_state == cudaSuccess ? PollState::kDone : PollState::kPending;
        },
        options_.timeout_s);
    if (w.kind == WaitOutcome::Kind::kTimedOut) time_out(op, w.waited_s);
    if (w.kind == WaitOutcome::Kind::kFailed) {
      if (cuda_state != cudaSuccess && cuda_state != cudaErrorNotReady) {
        failed_ = op + ": " + cudaGetErrorString(cuda_state);
        comm_.abort();
        MOE_THROW("cuda", "{} failed on rank {}", failed_, rank_);
      }
      fail(op, nccl_state);
    }
  }

  CommOptions options_;
  std::unique_ptr<Communicator> owned_host_;    // the world's; a node communicator has none
  Communicator* mpi_ = nullptr;                 // host collectives (MPI or one rank)
  std::unique_ptr<NcclCommunicatorImpl> node_;  // node_communicator(), made on first use
  int rank_ = 0, size_ = 1, device_ = 0;
  // Declared so that comm_ is aborted before the stream it may still use is destroyed.
  kernels::cuda::Stream comm_stream_;
  kernels::cuda::Event ready_;
  std::vector<kernels::cuda::Event> free_events_;
  std::map<ExchangeId, Pending> pending_;  // started, not yet waited for
  ExchangeId next_id_ = 0;
  NcclCommOwner comm_;
  cudaStream_t compute_stream_ = nullptr;
  bool shut_down_ = false;
  std::string failed_;  // non-empty once aborted
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const CommOptions& options, int device) {
  return std::make_unique<NcclCommunicatorImpl>(options, device);
}

}  // namespace moe::parallel
