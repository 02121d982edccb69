// Communicator: the collectives expert parallelism needs, typed so counts are always elements of
// T (never bytes). Every call is collective over all ranks and must be entered by every rank in
// the same order. Blocking calls give up after the timeout and throw, so no rank waits forever.
// The exchanges can also be started and completed later (start_* / wait), so that two of them,
// or an exchange and compute, proceed at once. Teardown is explicit (shutdown()); destructors
// never start a collective.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "parallel/node_layout.h"

namespace moe::parallel {

enum class ReduceOp { kSum, kMax, kMin };
enum class ScalarType { kI32, kI64, kF32, kF64 };

template <class T>
constexpr ScalarType scalar_type_of() {
  if constexpr (std::is_same_v<T, int32_t>)
    return ScalarType::kI32;
  else if constexpr (std::is_same_v<T, int64_t>)
    return ScalarType::kI64;
  else if constexpr (std::is_same_v<T, float>)
    return ScalarType::kF32;
  else {
    static_assert(std::is_same_v<T, double>, "reductions support int32, int64, float, double");
    return ScalarType::kF64;
  }
}

// A started exchange; wait(id) completes it. Until then the exchange owns every buffer it names
// (the caller keeps them alive and does not touch them). Each is waited for exactly once, in any
// order.
using ExchangeId = int64_t;

// Memory every rank of a communicator maps (all of them share one node's memory): each rank owns
// one segment of segment_bytes() and the segments lie back to back, so that one base pointer and a
// row index address any rank's rows. Each rank publishes its progress in counters (release stores
// after its writes) that the others wait for (acquire loads): data written before publish(c, v)
// is visible to a rank whose wait_all(c, v) returned. The communicator owns the memory until its
// shutdown(); the arena itself makes no collective call.
class SharedArena {
 public:
  static constexpr int kCounters = 4;  // counters per rank

  // oversubscribed: more ranks than the node's cores (a waiting rank then sleeps soon).
  SharedArena(unsigned char* first_segment, int64_t segment_bytes, uint64_t* counters,
              int num_ranks, int rank, double timeout_s, bool oversubscribed)
      : base_(first_segment),
        segment_bytes_(segment_bytes),
        counters_(counters),
        num_ranks_(num_ranks),
        rank_(rank),
        timeout_s_(timeout_s),
        oversubscribed_(oversubscribed) {}
  unsigned char* segment(int rank) const { return base_ + rank * segment_bytes_; }
  int64_t segment_bytes() const { return segment_bytes_; }
  // Counter `counter` of this rank = value (release: this rank's earlier writes come first).
  void publish(int counter, uint64_t value);
  // Until every other rank's counter `counter` is >= value (acquire). Yields, then sleeps until
  // the publisher wakes it (soon when ranks share cores, so as to leave the core to the rank it
  // waits for); throws moe::Error("comm") naming `op` and the late rank after the timeout.
  void wait_all(int counter, uint64_t value, const char* op) const;

 private:
  uint64_t* counter_at(int rank, int counter) const;

  unsigned char* base_;
  int64_t segment_bytes_;
  uint64_t* counters_;  // [num_ranks][kCounters], one cache line each
  int num_ranks_, rank_;
  double timeout_s_;
  bool oversubscribed_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Nodes from MPI (ranks sharing memory, MPI_Comm_split_type), or CommOptions::ranks_per_node.
  virtual const NodeLayout& node_layout() const = 0;
  int local_rank() const { return node_layout().local_rank; }
  int local_size() const { return node_layout().local_size; }  // ranks on this node
  // The ranks of this rank's node as a communicator of their own (rank = local rank), owned by
  // this one and shut down with it; this one itself when the job is one node. Collective on the
  // first call: every rank calls it at the same point. The node-first exchange's second level.
  virtual Communicator& node_communicator() = 0;
  virtual std::string name() const = 0;
  // True when buffers passed to all_to_all_v live in device memory (NCCL).
  virtual bool device_buffers() const = 0;
  // The stream the exchanged data is produced and consumed on (a backend's compute_stream());
  // a device communicator orders its own work against it. Host communicators ignore it.
  virtual void bind_compute_stream(void* /*stream*/) {}

  // Rank r sends send[displ_s(d) .. + send_counts[d]) to every rank d and receives
  // recv_counts[s] elements from every rank s, placed in rank order. Counts: [size()] each.
  template <class T>
  void all_to_all_v(std::span<const T> send, std::span<const int64_t> send_counts,
                    std::span<T> recv, std::span<const int64_t> recv_counts) {
    wait(start_all_to_all_v(send, send_counts, recv, recv_counts));
  }
  template <class T>
  ExchangeId start_all_to_all_v(std::span<const T> send, std::span<const int64_t> send_counts,
                                std::span<T> recv, std::span<const int64_t> recv_counts) {
    static_assert(std::is_trivially_copyable_v<T>);
    check_count_spans(send_counts.size(), recv_counts.size(), size());
    return start_all_to_all_v_raw(send.data(), send.size(), send_counts.data(), recv.data(),
                                  recv.size(), recv_counts.data(), sizeof(T));
  }
  // Blocks of a fixed size, whose used length only the message itself tells: block d of send
  // (bytes [d * block_bytes, (d + 1) * block_bytes)) goes to rank d and lands at s * block_bytes
  // of recv on the receiver; only its first send_bytes[d] bytes matter ([size()] host; nullptr:
  // all of them). A transport may move the whole block (NCCL, whose receives need their size) or
  // only send_bytes[d] (MPI, where a receive may be shorter than posted): no count exchange
  // precedes the payload. Rank r's own block is copied locally.
  ExchangeId start_all_to_all_blocks(const void* send, const int64_t* send_bytes, void* recv,
                                     int64_t block_bytes) {
    check_blocks(block_bytes, send_bytes, size());
    return start_all_to_all_blocks_raw(send, send_bytes, recv, block_bytes);
  }
  // Completes a started exchange (polled against the timeout; throws as the blocking calls do).
  virtual void wait(ExchangeId id) = 0;
  // A new SharedArena of segment_bytes per rank, or nullptr when this communicator has none (its
  // ranks do not share memory, it has one rank, or it moves device memory). Collective: every rank
  // calls it with the same size and gets an arena, or every rank gets nullptr. The memory stays
  // mapped until shutdown().
  virtual std::shared_ptr<SharedArena> make_shared_arena(int64_t /*segment_bytes*/) {
    return nullptr;
  }
  // Host memory: send [size() * n], recv [size() * n]; block d of send goes to rank d.
  virtual void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) = 0;

  // Host-memory collectives.
  template <class T>
  void all_reduce(std::span<T> data, ReduceOp op) {
    all_reduce_raw(data.data(), data.size(), scalar_type_of<T>(), op);
  }
  template <class T>
  void broadcast(std::span<T> data, int root) {
    static_assert(std::is_trivially_copyable_v<T>);
    broadcast_raw(data.data(), data.size() * sizeof(T), root);
  }
  // recv [size() * send.size()]: rank r's block at r * send.size().
  template <class T>
  void all_gather(std::span<const T> send, std::span<T> recv) {
    static_assert(std::is_trivially_copyable_v<T>);
    all_gather_raw(send.data(), send.size() * sizeof(T), recv.data(), recv.size() * sizeof(T));
  }
  // Root receives recv_counts[r] elements from rank r in rank order; other ranks pass an empty
  // recv (recv_counts is read on root only).
  template <class T>
  void gather_v(std::span<const T> send, std::span<T> recv, std::span<const int64_t> recv_counts,
                int root) {
    static_assert(std::is_trivially_copyable_v<T>);
    gather_v_raw(send.data(), send.size(), recv.data(), recv.size(), recv_counts.data(), sizeof(T),
                 root);
  }
  virtual void barrier() = 0;
  // Ends every rank of the job now, with this reason printed once. Never returns.
  [[noreturn]] virtual void abort(const std::string& reason, int exit_code) = 0;
  // Collective teardown; after it no other call is allowed.
  virtual void shutdown() = 0;

 protected:
  // Throws moe::Error("comm") unless both count spans have one entry per rank.
  static void check_count_spans(size_t num_send_counts, size_t num_recv_counts, int num_ranks);
  // Throws moe::Error("comm") unless counts is given, every count is >= 0 and they add up to at
  // most buffer_size elements. `side` is "send" or "recv".
  static void check_counts(const int64_t* counts, int num_ranks, size_t buffer_size,
                           const char* side);
  // Throws moe::Error("comm") unless root is a rank.
  static void check_root(int root, int num_ranks, const char* op);
  // Throws moe::Error("comm") unless block_bytes >= 0 and every send_bytes[d] (when given) is in
  // [0, block_bytes].
  static void check_blocks(int64_t block_bytes, const int64_t* send_bytes, int num_ranks);
  virtual ExchangeId start_all_to_all_v_raw(const void* send, size_t send_size,
                                            const int64_t* send_counts, void* recv,
                                            size_t recv_size, const int64_t* recv_counts,
                                            size_t elem_bytes) = 0;
  virtual ExchangeId start_all_to_all_blocks_raw(const void* send, const int64_t* send_bytes,
                                                 void* recv, int64_t block_bytes) = 0;
  virtual void all_reduce_raw(void* data, size_t count, ScalarType type, ReduceOp op) = 0;
  virtual void broadcast_raw(void* data, size_t size_bytes, int root) = 0;
  virtual void all_gather_raw(const void* send, size_t send_bytes, void* recv,
                              size_t recv_bytes) = 0;
  virtual void gather_v_raw(const void* send, size_t send_size, void* recv, size_t recv_size,
                            const int64_t* recv_counts, size_t elem_bytes, int root) = 0;
};

struct CommOptions {
  double timeout_s = 60.0;  // a collective not complete by then throws (and the job aborts)
  // Nodes of this many consecutive ranks instead of the detected ones (--ranks-per-node: a
  // multi-node layout rehearsed on one machine; local ranks, and so GPUs, then repeat every G
  // ranks); 0 detects.
  int ranks_per_node = 0;
};

// MPI must be initialised (see MpiSession); the MPI communicator uses MPI_COMM_WORLD.
std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& options);
// The whole job in one process without MPI: rank 0 of 1, every exchange a copy to itself.
std::unique_ptr<Communicator> make_one_rank_communicator();
// Host memory: the MPI communicator when MPI is initialised, else the one-rank communicator.
std::unique_ptr<Communicator> make_host_communicator(const CommOptions& options);
// The transports a build may have: mpi (host memory: the host communicator above) and nccl
// (device memory; builds with NCCL only, one GPU per node-local rank).
enum class CommKind { kMpi, kNccl };
// Parses "mpi" or "nccl"; anything else throws moe::Error (subsystem "config") naming both.
CommKind parse_comm_kind(const std::string& text);
// Throws when this build lacks the transport.
std::unique_ptr<Communicator> make_communicator(CommKind kind, const CommOptions& options);

// True when a launcher started this process as a rank of a job, read from what the launchers put
// in the environment: OMPI_COMM_WORLD_SIZE (Open MPI's mpirun), PMIX_RANK (PMIx launchers: Open
// MPI 5's prterun, srun --mpi=pmix), PMI_RANK or PMI_SIZE (PMI-1/2: the Hydra mpiexec of MPICH,
// Intel MPI and MVAPICH, srun --mpi=pmi2), SLURM_PROCID together with SLURM_NTASKS (srun; a
// batch script's own shell has them too and so counts as launched). General settings such as
// OMPI_MCA_* do not count.
bool started_by_launcher();

enum class MpiStart {
  kAlways,        // MPI_Init (a singleton without a launcher): the bench and test MPI drivers
  kWhenLaunched,  // only if started_by_launcher(); else MPI stays off (moe-ep: no start-up cost)
};

// Process-wide MPI lifetime, owned by main. Initialises MPI at most once (not at all with
// kWhenLaunched outside a launcher) and finalizes it at most once.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv, MpiStart start = MpiStart::kAlways);
  ~MpiSession();  // MPI_Finalize if still initialised and not aborted
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  int world_rank() const;  // 0 and 1 while MPI is off
  int world_size() const;
  // Prints `line` to stderr and ends the job: MPI_Abort(MPI_COMM_WORLD) when MPI runs with several
  // ranks, else exit(exit_code). For main's catch block.
  [[noreturn]] static void abort_job(const std::string& line, int exit_code);
};

}  // namespace moe::parallel
