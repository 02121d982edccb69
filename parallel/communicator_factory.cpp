// make_communicator: the one place that knows which transports this build has; and the argument
// checks every Communicator shares, so each transport rejects a bad call with the same message.
#include "kernels/common/check.h"
#include "parallel/communicator.h"
#ifdef MOE_EP_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace moe::parallel {

void Communicator::check_count_spans(size_t num_send_counts, size_t num_recv_counts,
                                     int num_ranks) {
  MOE_CHECK_AS("comm",
               num_send_counts == static_cast<size_t>(num_ranks) &&
                   num_recv_counts == static_cast<size_t>(num_ranks),
               "all_to_all_v: send/recv counts have {}/{} entries, expected one per rank ({})",
               num_send_counts, num_recv_counts, num_ranks);
}

void Communicator::check_counts(const int64_t* counts, int num_ranks, size_t buffer_size,
                                const char* side) {
  MOE_CHECK_AS("comm", counts != nullptr, "all_to_all_v: {} counts missing", side);
  int64_t total = 0;
  for (int r = 0; r < num_ranks; ++r) {
    MOE_CHECK_AS("comm", counts[r] >= 0, "all_to_all_v: {} count for rank {} is negative ({})",
                 side, r, counts[r]);
    total += counts[r];
  }
  MOE_CHECK_AS("comm", static_cast<uint64_t>(total) <= buffer_size,
               "all_to_all_v: {} counts add up to {} elements but the {} buffer holds {}", side,
               total, side, buffer_size);
}

void Communicator::check_blocks(int64_t block_bytes, const int64_t* send_bytes, int num_ranks) {
  MOE_CHECK_AS("comm", block_bytes >= 0, "all_to_all_blocks: block of {} bytes", block_bytes);
  if (send_bytes == nullptr) return;
  for (int r = 0; r < num_ranks; ++r) {
    MOE_CHECK_AS("comm", send_bytes[r] >= 0 && send_bytes[r] <= block_bytes,
                 "all_to_all_blocks: {} bytes for rank {} do not fit its block of {} bytes",
                 send_bytes[r], r, block_bytes);
  }
}

void Communicator::check_root(int root, int num_ranks, const char* op) {
  MOE_CHECK_AS("comm", root >= 0 && root < num_ranks, "{}: root {} is not a rank (0..{})", op, root,
               num_ranks - 1);
}

CommKind parse_comm_kind(const std::string& text) {
  if (text == "mpi") return CommKind::kMpi;
  if (text == "nccl") return CommKind::kNccl;
  MOE_THROW("config", "unknown communicator '{}' (expected mpi or nccl)", text);
}

std::unique_ptr<Communicator> make_communicator(CommKind kind, const CommOptions& options) {
  if (kind == CommKind::kMpi) return make_host_communicator(options);
#ifdef MOE_EP_HAVE_NCCL
  return make_nccl_communicator(options, /*device=*/-1);  // the node-local rank's GPU
#else
  MOE_THROW("config",
            "--comm nccl: this moe-ep was built without NCCL (configure with "
            "-DMOE_EP_CUDA=ON on a machine with nvcc)");
#endif
}

}  // namespace moe::parallel
