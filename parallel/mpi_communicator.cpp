// MpiCommunicator (host memory, MPI_COMM_WORLD or a node's part of it), MpiSession (process-wide
// MPI lifetime; moe-ep starts MPI only under a launcher) and make_host_communicator, which picks
// MPI or one rank. Every collective is started non-blocking and completed by polling MPI_Test
// against a deadline, so a stuck or dead peer turns into a moe::Error("comm") instead of a hang.
// After a timeout the communicator refuses further calls: the abandoned operation may still touch
// its buffers.
#include <mpi.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace moe::parallel {

namespace {

// Polling schedule: a burst of MPI_Test calls keeps latency low when peers are ready; after it,
// yielding and then short sleeps let oversubscribed ranks (8 ranks on 2 cores) run their part.
constexpr int kSpinTests = 4000;
constexpr int kYieldTests = 2000;
constexpr auto kMinSleep = std::chrono::microseconds(20);
constexpr auto kMaxSleep = std::chrono::microseconds(100);
// Tags of the point-to-point all-to-all exchanges (cycled per call; MPI guarantees >= 32767).
constexpr int kExchangeTagBase = 1000;
constexpr uint64_t kExchangeTags = 16384;
// Bytes of one rank's SharedArena counters: one 64-byte line per counter.
constexpr int64_t kArenaCounterBytes = SharedArena::kCounters * 64;

// A stand-in address for empty buffers: some MPI paths reject null even with zero counts.
alignas(16) unsigned char g_empty[16];

void* nonnull(void* p) {
  return p != nullptr ? p : g_empty;
}
const void* nonnull(const void* p) {
  return p != nullptr ? p : g_empty;
}

int to_int(int64_t v, const char* what, const char* op) {
  MOE_CHECK_AS("comm", v >= 0 && v <= INT_MAX,
               "{}: {} is {}, outside MPI's count range 0..{} (split the message)", op, what, v,
               INT_MAX);
  return static_cast<int>(v);
}

MPI_Op to_mpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  MOE_THROW("comm", "unknown reduce op {}", static_cast<int>(op));
}

MPI_Datatype to_mpi(ScalarType t) {
  switch (t) {
    case ScalarType::kI32:
      return MPI_INT32_T;
    case ScalarType::kI64:
      return MPI_INT64_T;
    case ScalarType::kF32:
      return MPI_FLOAT;
    case ScalarType::kF64:
      return MPI_DOUBLE;
  }
  MOE_THROW("comm", "unknown scalar type {}", static_cast<int>(t));
}

bool mpi_live() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(const CommOptions& options) : options_(options) {
    MOE_CHECK_AS("comm", mpi_live(),
                 "the MPI communicator needs MPI to be initialised (create an MpiSession first)");
    MOE_CHECK_AS("comm", options_.timeout_s > 0, "collective timeout must be > 0 s, got {}",
                 options_.timeout_s);
    // Errors come back as return codes so MOE_MPI_CHECK can turn them into moe::Error.
    MOE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MOE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MOE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    layout_ = detect_node_layout();
  }

  // The ranks of one node of `parent_layout` as their own communicator (`comm`, owned).
  MpiCommunicator(const CommOptions& options, MPI_Comm comm, const NodeLayout& parent_layout)
      : options_(options), comm_(comm), owns_comm_(true) {
    MOE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MOE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MOE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    layout_.local_rank = parent_layout.local_rank;
    layout_.local_size = parent_layout.local_size;
    MOE_CHECK_AS("comm", rank_ == layout_.local_rank && size_ == layout_.local_size,
                 "node communicator: rank {} of {}, but the node layout says {} of {}", rank_,
                 size_, layout_.local_rank, layout_.local_size);
    // A node of --ranks-per-node on one machine shares memory too; one of MPI's always does.
    node_shared_ = split_shared().size == size_;
  }

  ~MpiCommunicator() override {
    // Local cleanup only (MPI_Type_free is not a collective); shutdown() may have done it.
    if (mpi_live()) free_types();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const NodeLayout& node_layout() const override { return layout_; }
  // Split by node on the first call (collective over this communicator).
  Communicator& node_communicator() override {
    if (layout_.num_nodes == 1) return *this;
    if (node_ == nullptr) {
      check_usable("node_communicator");
      MPI_Comm c = MPI_COMM_NULL;
      MOE_MPI_CHECK(MPI_Comm_split(comm_, layout_.node, rank_, &c));
      node_ = std::make_unique<MpiCommunicator>(options_, c, layout_);
    }
    return *node_;
  }
  std::string name() const override { return "mpi"; }
  bool device_buffers() const override { return false; }

  void all_to_all(std::span<const int64_t> send, std::span<int64_t> recv) override {
    check_usable("all_to_all");
    MOE_CHECK_AS("comm",
                 send.size() % static_cast<size_t>(size_) == 0 && recv.size() == send.size(),
                 "all_to_all: send has {} and recv {} elements; both must be the same multiple "
                 "of the world size {}",
                 send.size(), recv.size(), size_);
    const int n = to_int(static_cast<int64_t>(send.size() / size_), "block size", "all_to_all");
    Pending p;
    for (int peer = 0; peer < size_; ++peer) {
      p.send_counts.push_back(n);
      p.recv_counts.push_back(n);
      p.send_displs.push_back(n * peer);
      p.recv_displs.push_back(n * peer);
    }
    start_exchange(send.data(), recv.data(), MPI_INT64_T, sizeof(int64_t), p);
    wait(p, "all_to_all");
  }

  void barrier() override {
    check_usable("barrier");
    MPI_Request req;
    MOE_MPI_CHECK(MPI_Ibarrier(comm_, &req));
    wait(req, "barrier");
  }

  [[noreturn]] void abort(const std::string& reason, int exit_code) override {
    static std::atomic<bool> printed{false};
    if (!printed.exchange(true)) {
      std::fprintf(stderr, "%s\n", reason.c_str());
      std::fflush(stderr);
    }
    if (mpi_live()) MPI_Abort(MPI_COMM_WORLD, exit_code);
    // MPI_Abort does not return; this only satisfies [[noreturn]] if MPI is already gone.
    std::_Exit(exit_code);
  }

  void shutdown() override {
    if (shut_down_) return;
    shut_down_ = true;
    if (node_ != nullptr) node_->shutdown();
    if (!mpi_live()) return;
    free_types();
    for (MPI_Win& w : windows_) MPI_Win_free(&w);  // collective, as shutdown is
    windows_.clear();
    if (owns_comm_) MPI_Comm_free(&comm_);
  }

  // One MPI_Win_allocate_shared window over this communicator: rank 0's part starts with every
  // rank's counters, then come the segments, rank after rank (MPI's contiguous default, checked
  // below).
  std::shared_ptr<SharedArena> make_shared_arena(int64_t segment_bytes) override {
    check_usable("make_shared_arena");
    MOE_CHECK_AS("comm", segment_bytes > 0, "shared arena of {} bytes per rank", segment_bytes);
    if (!node_shared_ || layout_.num_nodes != 1 || size_ == 1) return nullptr;
    barrier();  // every rank is here (or this throws after the timeout): the allocation cannot hang
    const int64_t counter_bytes = kArenaCounterBytes * size_;
    const MPI_Aint mine = static_cast<MPI_Aint>(segment_bytes + (rank_ == 0 ? counter_bytes : 0));
    unsigned char* base = nullptr;
    MPI_Win win = MPI_WIN_NULL;
    MOE_MPI_CHECK(MPI_Win_allocate_shared(mine, 1, MPI_INFO_NULL, comm_, &base, &win));
    windows_.push_back(win);
    MPI_Aint size0 = 0;
    int disp = 0;
    unsigned char* first = nullptr;
    MOE_MPI_CHECK(MPI_Win_shared_query(win, 0, &size0, &disp, &first));
    bool contiguous = true;
    for (int r = 1; r < size_; ++r) {
      MPI_Aint size_r = 0;
      unsigned char* at = nullptr;
      MOE_MPI_CHECK(MPI_Win_shared_query(win, r, &size_r, &disp, &at));
      contiguous &= at == first + counter_bytes + r * segment_bytes;
    }
    // Every rank maps the same window, so all see the same answer (and keep the message path).
    if (!contiguous) return nullptr;
    auto* counters = reinterpret_cast<uint64_t*>(first);
    for (int c = 0; c < SharedArena::kCounters; ++c) {
      std::memset(first + (rank_ * SharedArena::kCounters + c) * 64, 0, 64);
    }
    barrier();  // every rank's counters are zero before anyone publishes
    const bool oversubscribed = size_ > static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    return std::make_shared<SharedArena>(first + counter_bytes, segment_bytes, counters, size_,
                                         rank_, options_.timeout_s, oversubscribed);
  }

 protected:
  ExchangeId start_all_to_all_v_raw(const void* send, size_t send_size, const int64_t* send_counts,
                                    void* recv, size_t recv_size, const int64_t* recv_counts,
                                    size_t elem_bytes) override {
    check_usable("all_to_all_v");
    MOE_CHECK_AS("comm", elem_bytes > 0, "all_to_all_v: zero-sized elements");
    Pending p;
    p.send_counts.resize(size_);
    p.send_displs.resize(size_);
    p.recv_counts.resize(size_);
    p.recv_displs.resize(size_);
    fill_counts(send_counts, send_size, "send", p.send_counts, p.send_displs);
    fill_counts(recv_counts, recv_size, "recv", p.recv_counts, p.recv_displs);
    start_exchange(send, recv, element_type(elem_bytes), elem_bytes, p);
    return park(std::move(p));
  }

  // Every peer's block is received into its whole slot (MPI allows the message to be shorter);
  // only the used bytes are sent, empty ones too: the receiver cannot know they are empty.
  ExchangeId start_all_to_all_blocks_raw(const void* send, const int64_t* send_bytes, void* recv,
                                         int64_t block_bytes) override {
    check_usable("all_to_all_blocks");
    const int block = to_int(block_bytes, "block size", "all_to_all_blocks");
    Pending p;
    for (int peer = 0; peer < size_; ++peer) {
      const int64_t displ = static_cast<int64_t>(peer) * block_bytes;
      p.send_displs.push_back(to_int(displ, "displacement", "all_to_all_blocks"));
      p.recv_displs.push_back(p.send_displs.back());
      p.send_counts.push_back(send_bytes != nullptr ? static_cast<int>(send_bytes[peer]) : block);
      p.recv_counts.push_back(peer == rank_ ? p.send_counts.back() : block);
    }
    start_exchange(send, recv, MPI_BYTE, 1, p, /*send_empty=*/true);
    return park(std::move(p));
  }

  void wait(ExchangeId id) override {
    check_usable("wait");
    auto it = pending_.find(id);
    MOE_CHECK_AS("comm", it != pending_.end(), "wait: exchange {} is not pending on rank {}", id,
                 rank_);
    Pending p = std::move(it->second);
    pending_.erase(it);
    wait(p, "all_to_all_v");
  }

  void all_reduce_raw(void* data, size_t count, ScalarType type, ReduceOp op) override {
    check_usable("all_reduce");
    const int n = to_int(static_cast<int64_t>(count), "element count", "all_reduce");
    MPI_Request req;
    MOE_MPI_CHECK(
        MPI_Iallreduce(MPI_IN_PLACE, nonnull(data), n, to_mpi(type), to_mpi(op), comm_, &req));
    wait(req, "all_reduce");
  }

  void broadcast_raw(void* data, size_t size_bytes, int root) override {
    check_usable("broadcast");
    check_root(root, size_, "broadcast");
    const int n = to_int(static_cast<int64_t>(size_bytes), "byte count", "broadcast");
    MPI_Request req;
    MOE_MPI_CHECK(MPI_Ibcast(nonnull(data), n, MPI_BYTE, root, comm_, &req));
    wait(req, "broadcast");
  }

  void all_gather_raw(const void* send, size_t send_bytes, void* recv, size_t recv_bytes) override {
    check_usable("all_gather");
    MOE_CHECK_AS("comm", recv_bytes == send_bytes * static_cast<size_t>(size_),
                 "all_gather: recv holds {} bytes, expected world size {} x {} bytes", recv_bytes,
                 size_, send_bytes);
    const int n = to_int(static_cast<int64_t>(send_bytes), "byte count", "all_gather");
    MPI_Request req;
    MOE_MPI_CHECK(
        MPI_Iallgather(nonnull(send), n, MPI_BYTE, nonnull(recv), n, MPI_BYTE, comm_, &req));
    wait(req, "all_gather");
  }

  void gather_v_raw(const void* send, size_t send_size, void* recv, size_t recv_size,
                    const int64_t* recv_counts, size_t elem_bytes, int root) override {
    check_usable("gather_v");
    check_root(root, size_, "gather_v");
    MOE_CHECK_AS("comm", elem_bytes > 0, "gather_v: zero-sized elements");
    const int n = to_int(static_cast<int64_t>(send_size), "send count", "gather_v");
    Pending p;
    if (rank_ == root) {
      MOE_CHECK_AS("comm", recv_counts != nullptr, "gather_v: root {} needs recv_counts", root);
      p.recv_counts.resize(size_);
      p.recv_displs.resize(size_);
      fill_counts(recv_counts, recv_size, "recv", p.recv_counts, p.recv_displs);
      MOE_CHECK_AS("comm", p.recv_counts[root] == n,
                   "gather_v: root {} sends {} elements but expects {} from itself", root, n,
                   p.recv_counts[root]);
    }
    MPI_Datatype type = element_type(elem_bytes);
    MOE_MPI_CHECK(MPI_Igatherv(
        nonnull(send), n, type, nonnull(recv), rank_ == root ? p.recv_counts.data() : nullptr,
        rank_ == root ? p.recv_displs.data() : nullptr, type, root, comm_, &p.request));
    wait(p, "gather_v");
  }

 private:
  // A started collective plus the count arrays MPI reads until it completes.
  struct Pending {
    MPI_Request request = MPI_REQUEST_NULL;
    std::vector<MPI_Request> peers;  // point-to-point exchanges: one request per message
    std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
  };

  // All-to-all as point-to-point messages (receives posted first, empty blocks skipped on both
  // sides, the own block copied locally). Open MPI 4.1's libnbc MPI_Ialltoall(v) was seen to
  // hang after an MPI_Ialltoallv with empty blocks (4 ranks, one without tokens); p2p requests
  // complete reliably, and this is the shape NCCL's grouped send/recv has as well. A per-call tag
  // keeps consecutive exchanges apart.
  // With send_empty, empty blocks are sent too (fixed blocks: the receiver always posts one).
  void start_exchange(const void* send, void* recv, MPI_Datatype type, size_t elem_bytes,
                      Pending& p, bool send_empty = false) {
    const int tag = kExchangeTagBase + static_cast<int>(exchange_seq_++ % kExchangeTags);
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_ || p.recv_counts[peer] == 0) continue;
      MPI_Request r;
      MOE_MPI_CHECK(MPI_Irecv(static_cast<char*>(recv) + p.recv_displs[peer] * elem_bytes,
                              p.recv_counts[peer], type, peer, tag, comm_, &r));
      p.peers.push_back(r);
    }
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_ || (p.send_counts[peer] == 0 && !send_empty)) continue;
      MPI_Request r;
      MOE_MPI_CHECK(MPI_Isend(static_cast<const char*>(send) + p.send_displs[peer] * elem_bytes,
                              p.send_counts[peer], type, peer, tag, comm_, &r));
      p.peers.push_back(r);
    }
    MOE_CHECK_AS("comm", p.send_counts[rank_] == p.recv_counts[rank_],
                 "all_to_all_v: rank {} sends {} elements to itself but expects {}", rank_,
                 p.send_counts[rank_], p.recv_counts[rank_]);
    if (p.send_counts[rank_] > 0) {
      std::memcpy(static_cast<char*>(recv) + p.recv_displs[rank_] * elem_bytes,
                  static_cast<const char*>(send) + p.send_displs[rank_] * elem_bytes,
                  static_cast<size_t>(p.send_counts[rank_]) * elem_bytes);
    }
  }

  ExchangeId park(Pending&& p) {
    const ExchangeId id = next_id_++;
    pending_.emplace(id, std::move(p));
    return id;
  }

  void check_usable(const char* op) const {
    MOE_CHECK_AS("comm", !shut_down_, "{}: the communicator was shut down", op);
    MOE_CHECK_AS("comm", failed_op_.empty(),
                 "{}: the communicator is unusable since collective {} timed out on rank {}", op,
                 failed_op_, rank_);
  }

  // Element counts -> MPI int counts and prefix-sum displacements, checking every bound.
  void fill_counts(const int64_t* counts, size_t buffer_size, const char* side,
                   std::vector<int>& out_counts, std::vector<int>& out_displs) const {
    check_counts(counts, size_, buffer_size, side);
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      out_displs[r] = to_int(total, "displacement", "all_to_all_v");
      out_counts[r] = to_int(counts[r], "count", "all_to_all_v");
      total += counts[r];
    }
  }

  // Contiguous element types are cached per size so counts stay in elements, not bytes.
  MPI_Datatype element_type(size_t elem_bytes) {
    if (elem_bytes == 1) return MPI_BYTE;
    auto it = types_.find(elem_bytes);
    if (it != types_.end()) return it->second;
    MPI_Datatype t;
    MOE_MPI_CHECK(MPI_Type_contiguous(
        to_int(static_cast<int64_t>(elem_bytes), "element size", "datatype"), MPI_BYTE, &t));
    MOE_MPI_CHECK(MPI_Type_commit(&t));
    types_.emplace(elem_bytes, t);
    return t;
  }

  void free_types() {
    for (auto& [bytes, t] : types_) MPI_Type_free(&t);
    types_.clear();
  }

  void wait(MPI_Request& req, const char* op) {
    Pending p;
    p.request = req;
    wait(p, op);
  }

  // Polls until the collective completes or the deadline passes. On timeout the request (and its
  // count arrays) is parked, since MPI may still use them, and the communicator is poisoned.
  void wait(Pending& p, const char* op) {
    int done = 0;
    auto test = [&p, &done] {
      if (p.peers.empty()) {
        MOE_MPI_CHECK(MPI_Test(&p.request, &done, MPI_STATUS_IGNORE));
      } else {
        MOE_MPI_CHECK(MPI_Testall(static_cast<int>(p.peers.size()), p.peers.data(), &done,
                                  MPI_STATUSES_IGNORE));
      }
    };
    if (p.peers.empty() && p.request == MPI_REQUEST_NULL) return;  // nothing to exchange
    for (int i = 0; i < kSpinTests; ++i) {
      test();
      if (done) return;
    }
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(options_.timeout_s));
    auto sleep = kMinSleep;
    for (int i = 0;; ++i) {
      test();
      if (done) return;
      if (Clock::now() >= deadline) break;
      if (i < kYieldTests) {
        sched_yield();
      } else {
        std::this_thread::sleep_for(sleep);
        sleep = std::min(sleep * 2, kMaxSleep);
      }
    }
    failed_op_ = op;
    abandoned_.push_back(std::move(p));
    MOE_THROW("comm",
              "collective {} did not complete within {:g} s on rank {} (another rank failed or is "
              "stuck)",
              op, options_.timeout_s, rank_);
  }

  // The ranks of this communicator that share this rank's memory (MPI_Comm_split_type): how
  // many, and the lowest rank among them. Collective.
  struct SharedGroup {
    int size = 1, leader = 0;
  };
  SharedGroup split_shared() {
    MPI_Comm shared = MPI_COMM_NULL;
    MOE_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &shared));
    SharedGroup g;
    g.leader = rank_;
    MOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &g.leader, 1, MPI_INT, MPI_MIN, shared));
    MOE_MPI_CHECK(MPI_Comm_size(shared, &g.size));
    MOE_MPI_CHECK(MPI_Comm_free(&shared));
    return g;
  }

  // Nodes: MPI's shared-memory split gives each rank its node (ranks that can share memory); the
  // lowest world rank of each node labels it. --ranks-per-node replaces this with fixed blocks.
  // Runs once at construction, before any rank can have failed a collective.
  // Also sets node_shared_ (every rank of the world shares this rank's memory), even when
  // --ranks-per-node pretends otherwise.
  NodeLayout detect_node_layout() {
    const SharedGroup shared = split_shared();
    node_shared_ = shared.size == size_;
    if (options_.ranks_per_node > 0) {
      return node_layout_for_ranks_per_node(size_, rank_, options_.ranks_per_node);
    }
    int leader = shared.leader;
    std::vector<int> leaders(static_cast<size_t>(size_));
    all_gather_raw(&leader, sizeof(int), leaders.data(), leaders.size() * sizeof(int));
    return node_layout_from_ids(leaders, rank_, "from MPI_Comm_split_type");
  }

  CommOptions options_;
  MPI_Comm comm_ = MPI_COMM_WORLD;
  bool owns_comm_ = false;                 // a node communicator frees its MPI_Comm
  std::unique_ptr<MpiCommunicator> node_;  // node_communicator(), made on first use
  int rank_ = 0, size_ = 1;
  NodeLayout layout_;
  bool node_shared_ = false;      // every rank on this rank's node (MPI_Comm_split_type)
  std::vector<MPI_Win> windows_;  // shared arenas, freed by shutdown()
  bool shut_down_ = false;
  std::string failed_op_;                  // non-empty after a timeout
  uint64_t exchange_seq_ = 0;              // calls of start_exchange, for its tags
  std::vector<Pending> abandoned_;         // timed-out requests MPI may still complete
  std::map<ExchangeId, Pending> pending_;  // started, not yet waited for
  ExchangeId next_id_ = 0;
  std::map<size_t, MPI_Datatype> types_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const CommOptions& options) {
  return std::make_unique<MpiCommunicator>(options);
}

std::unique_ptr<Communicator> make_host_communicator(const CommOptions& options) {
  if (mpi_live()) return make_mpi_communicator(options);
  if (options.ranks_per_node > 0) node_layout_for_ranks_per_node(1, 0, options.ranks_per_node);
  return make_one_rank_communicator();
}

bool started_by_launcher() {
  auto set = [](const char* name) { return std::getenv(name) != nullptr; };
  return set("OMPI_COMM_WORLD_SIZE") || set("PMIX_RANK") || set("PMI_RANK") || set("PMI_SIZE") ||
         (set("SLURM_PROCID") && set("SLURM_NTASKS"));
}

MpiSession::MpiSession(int* argc, char*** argv, MpiStart start) {
  int init = 0;
  MPI_Initialized(&init);
  if (!init && (start == MpiStart::kAlways || started_by_launcher())) {
    int provided = 0;
    // FUNNELED: only the main thread calls MPI (BLAS threads never do).
    MOE_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  }
  set_error_rank(world_rank());
}

MpiSession::~MpiSession() {
  if (mpi_live()) MPI_Finalize();
}

int MpiSession::world_rank() const {
  if (!mpi_live()) return 0;
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int MpiSession::world_size() const {
  if (!mpi_live()) return 1;
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

void MpiSession::abort_job(const std::string& line, int exit_code) {
  int rank = 0, size = 1;
  const bool live = mpi_live();
  if (live) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  if (size <= 1) {
    std::fprintf(stderr, "%s\n", line.c_str());
    std::fflush(stderr);
    if (live) MPI_Finalize();
    // main's terminal path: nothing above us may run destructors that touch MPI again.
    std::_Exit(exit_code);
  }
  // When every rank hits the same error (a bad config read everywhere), rank 0's MPI_Abort ends
  // the others during their pause, so the job prints one line instead of N. The pause allows for
  // a loaded machine, where the abort takes hundreds of milliseconds to reach the other ranks
  // (300 ms let three lines through under load 6); a fault on one other rank alone costs it.
  if (rank != 0) std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace moe::parallel
