// OneRankCommunicator: the job is this one process (started without an MPI or Slurm launcher),
// so MPI is never initialised. Rank 0 of 1; an exchange is a copy to itself, a reduction or
// broadcast leaves the data as it is. Arguments are checked as the MPI communicator checks them.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace moe::parallel {
namespace {

class OneRankCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const NodeLayout& node_layout() const override { return layout_; }
  Communicator& node_communicator() override { return *this; }
  std::string name() const override { return "one-rank"; }
  bool device_buffers() const override { return false; }

  void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) override {
    check_usable("all_to_all");
    MOE_CHECK_AS("comm", recv.size() == send.size(),
                 "all_to_all: send has {} and recv {} elements; both must be the same multiple "
                 "of the world size 1",
                 send.size(), recv.size());
    copy(send.data(), recv.data(), send.size_bytes());
  }

  void barrier() override { check_usable("barrier"); }

  [[noreturn]] void abort(const std::string& reason, int exit_code) override {
    static std::atomic<bool> printed{false};
    if (!printed.exchange(true)) {
      std::fprintf(stderr, "%s\n", reason.c_str());
      std::fflush(stderr);
    }
    std::fflush(stdout);
    std::_Exit(exit_code);
  }

  void shutdown() override { shut_down_ = true; }

 protected:
  // Exchanges complete when started (a copy to itself); wait() only checks the id.
  ExchangeId start_all_to_all_v_raw(const void* send, size_t send_size, const int64_t* send_counts,
                                    void* recv, size_t recv_size, const int64_t* recv_counts,
                                    size_t elem_bytes) override {
    check_usable("all_to_all_v");
    MOE_CHECK_AS("comm", elem_bytes > 0, "all_to_all_v: zero-sized elements");
    check_counts(send_counts, 1, send_size, "send");
    check_counts(recv_counts, 1, recv_size, "recv");
    MOE_CHECK_AS("comm", send_counts[0] == recv_counts[0],
                 "all_to_all_v: rank 0 sends {} elements to itself but expects {}", send_counts[0],
                 recv_counts[0]);
    copy(send, recv, static_cast<size_t>(send_counts[0]) * elem_bytes);
    return started_++;
  }

  ExchangeId start_all_to_all_blocks_raw(const void* send, const int64_t* send_bytes, void* recv,
                                         int64_t block_bytes) override {
    check_usable("all_to_all_blocks");
    copy(send, recv, static_cast<size_t>(send_bytes != nullptr ? send_bytes[0] : block_bytes));
    return started_++;
  }

  void wait(ExchangeId id) override {
    check_usable("wait");
    MOE_CHECK_AS("comm", id >= 0 && id < started_, "wait: exchange {} was never started", id);
  }

  void all_reduce_raw(void*, size_t, ScalarType, ReduceOp) override { check_usable("all_reduce"); }

  void broadcast_raw(void*, size_t, int root) override {
    check_usable("broadcast");
    check_root(root, 1, "broadcast");
  }

  void all_gather_raw(const void* send, size_t send_bytes, void* recv, size_t recv_bytes) override {
    check_usable("all_gather");
    MOE_CHECK_AS("comm", recv_bytes == send_bytes,
                 "all_gather: recv holds {} bytes, expected world size 1 x {} bytes", recv_bytes,
                 send_bytes);
    copy(send, recv, send_bytes);
  }

  void gather_v_raw(const void* send, size_t send_size, void* recv, size_t recv_size,
                    const int64_t* recv_counts, size_t elem_bytes, int root) override {
    check_usable("gather_v");
    check_root(root, 1, "gather_v");
    MOE_CHECK_AS("comm", elem_bytes > 0, "gather_v: zero-sized elements");
    MOE_CHECK_AS("comm", recv_counts != nullptr, "gather_v: root 0 needs recv_counts");
    check_counts(recv_counts, 1, recv_size, "recv");
    MOE_CHECK_AS("comm", static_cast<size_t>(recv_counts[0]) == send_size,
                 "gather_v: root 0 sends {} elements but expects {} from itself", send_size,
                 recv_counts[0]);
    copy(send, recv, send_size * elem_bytes);
  }

 private:
  void check_usable(const char* op) const {
    MOE_CHECK_AS("comm", !shut_down_, "{}: the communicator was shut down", op);
  }

  // send and recv may be the same buffer (an exchange in place).
  static void copy(const void* send, void* recv, size_t bytes) {
    if (bytes > 0 && send != recv) std::memmove(recv, send, bytes);
  }

  NodeLayout layout_;  // one node of one rank
  bool shut_down_ = false;
  ExchangeId started_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_one_rank_communicator() {
  return std::make_unique<OneRankCommunicator>();
}

}  // namespace moe::parallel
