// MpiCommunicator under mpirun (any world size): every collective on deterministic seeded data,
// checked on every rank without gathering (nccl-tests style: count the wrong elements), the
// argument checks, shutdown, and the timeout path when one rank skips a collective.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <functional>
#include <numeric>

#include "kernels/common/check.h"
#include "parallel/communicator.h"

namespace moe::parallel {
namespace {

std::unique_ptr<Communicator> make_comm(double timeout_s = 60.0) {
  CommOptions options;
  options.timeout_s = timeout_s;
  return make_mpi_communicator(options);
}

// Elements rank s sends to rank d: some pairs send nothing.
int64_t block_count(int s, int d, int64_t scale) {
  return ((3 * s + 5 * d + 1) % 7) * scale;
}

struct Triple {  // a 12-byte element: exercises a non-power-of-two MPI datatype
  int32_t a, b, c;
};

template <class T>
T element(int s, int d, int64_t i) {
  const int64_t v = s * 1000003LL + d * 1009LL + i;
  if constexpr (std::is_same_v<T, Triple>) {
    return Triple{static_cast<int32_t>(v), static_cast<int32_t>(-v), static_cast<int32_t>(i)};
  } else if constexpr (std::is_same_v<T, uint8_t>) {
    return static_cast<uint8_t>(v * 31 + 7);
  } else if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(v % 65536) * 0.5f;  // exact in float
  } else {
    return static_cast<T>(v);
  }
}

template <class T>
bool same(const T& x, const T& y) {
  return std::memcmp(&x, &y, sizeof(T)) == 0;
}

// Returns the number of wrong received elements on this rank.
template <class T>
int64_t run_all_to_all_v(Communicator& comm, int64_t scale) {
  const int n = comm.size(), me = comm.rank();
  std::vector<int64_t> send_counts(n), recv_counts(n);
  for (int d = 0; d < n; ++d) send_counts[d] = block_count(me, d, scale);
  for (int s = 0; s < n; ++s) recv_counts[s] = block_count(s, me, scale);
  std::vector<T> send, recv(std::accumulate(recv_counts.begin(), recv_counts.end(), int64_t{0}));
  for (int d = 0; d < n; ++d) {
    for (int64_t i = 0; i < send_counts[d]; ++i) send.push_back(element<T>(me, d, i));
  }
  comm.all_to_all_v<T>(send, send_counts, recv, recv_counts);
  int64_t wrong = 0, at = 0;
  for (int s = 0; s < n; ++s) {
    for (int64_t i = 0; i < recv_counts[s]; ++i)
      wrong += same(recv[at++], element<T>(s, me, i)) ? 0 : 1;
  }
  return wrong;
}

TEST(MpiCommunicator, AllToAllVDeliversSeededBlocksForEveryElementSize) {
  auto comm = make_comm();
  for (int64_t scale : {1, 1000, 50000}) {
    EXPECT_EQ(run_all_to_all_v<float>(*comm, scale), 0) << "float, scale " << scale;
    EXPECT_EQ(run_all_to_all_v<int64_t>(*comm, scale), 0) << "int64, scale " << scale;
  }
  EXPECT_EQ(run_all_to_all_v<Triple>(*comm, 13), 0);
  EXPECT_EQ(run_all_to_all_v<uint8_t>(*comm, 101), 0);
  EXPECT_EQ(run_all_to_all_v<Triple>(*comm, 1), 0) << "cached datatype reused";
  comm->shutdown();
}

TEST(MpiCommunicator, AllToAllVRejectsBadCountsOnEveryRankBeforeTalking) {
  auto comm = make_comm();
  const int n = comm->size();
  std::vector<float> send(8), recv(8);
  std::vector<int64_t> ok(n, 0), negative(n, 0), too_many(n, 0), huge(n, 0);
  negative[0] = -1;
  too_many[n - 1] = 9;
  huge[0] = int64_t{1} << 31;
  EXPECT_THROW(comm->all_to_all_v<float>(send, negative, recv, ok), moe::Error);
  EXPECT_THROW(comm->all_to_all_v<float>(send, too_many, recv, ok), moe::Error);
  EXPECT_THROW(comm->all_to_all_v<float>(send, ok, recv, too_many), moe::Error);
  EXPECT_THROW(comm->all_to_all_v<float>(send, huge, recv, ok), moe::Error);
  std::vector<int64_t> short_counts(n + 1, 0);
  EXPECT_THROW(comm->all_to_all_v<float>(send, short_counts, recv, ok), moe::Error);
  try {
    comm->all_to_all_v<float>(send, too_many, recv, ok);
  } catch (const moe::Error& e) {
    EXPECT_EQ(e.subsystem(), "comm");
    EXPECT_NE(e.message().find("send counts add up to 9 elements but the send buffer holds 8"),
              std::string::npos)
        << e.message();
  }
  // Nothing was started, so the communicator still works.
  comm->barrier();
  EXPECT_EQ(run_all_to_all_v<float>(*comm, 2), 0);
}

TEST(MpiCommunicator, AllToAllTransposesBlocksOfCounts) {
  auto comm = make_comm();
  const int n = comm->size(), me = comm->rank();
  std::vector<int64_t> send(2 * n), recv(2 * n, -7);
  for (int d = 0; d < n; ++d) {
    send[2 * d] = me * 100 + d;
    send[2 * d + 1] = -(me * 100 + d) - 1;
  }
  comm->all_to_all(send, recv);
  for (int s = 0; s < n; ++s) {
    EXPECT_EQ(recv[2 * s], s * 100 + me);
    EXPECT_EQ(recv[2 * s + 1], -(s * 100 + me) - 1);
  }
  std::vector<int64_t> longer(2 * n + 1);
  EXPECT_THROW(comm->all_to_all(send, longer), moe::Error) << "recv must match send";
  if (n > 1) {
    EXPECT_THROW(comm->all_to_all(longer, longer), moe::Error) << "not a multiple of n";
  }
}

template <class T>
void check_all_reduce(Communicator& comm) {
  const int n = comm.size(), me = comm.rank();
  const int count = 17;
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
    std::vector<T> data(count);
    for (int i = 0; i < count; ++i) data[i] = static_cast<T>((me + i) % 5 - 2 + i);
    comm.all_reduce<T>(data, op);
    int64_t wrong = 0;
    for (int i = 0; i < count; ++i) {
      T want = op == ReduceOp::kSum ? T(0) : static_cast<T>((0 + i) % 5 - 2 + i);
      for (int r = 0; r < n; ++r) {
        const T v = static_cast<T>((r + i) % 5 - 2 + i);
        if (op == ReduceOp::kSum) want += v;
        if (op == ReduceOp::kMax) want = std::max(want, v);
        if (op == ReduceOp::kMin) want = std::min(want, v);
      }
      wrong += data[i] == want ? 0 : 1;
    }
    EXPECT_EQ(wrong, 0) << "op " << static_cast<int>(op) << " type size " << sizeof(T);
  }
}

TEST(MpiCommunicator, AllReduceSumMaxMinForEveryScalarType) {
  auto comm = make_comm();
  check_all_reduce<int32_t>(*comm);
  check_all_reduce<int64_t>(*comm);
  check_all_reduce<float>(*comm);
  check_all_reduce<double>(*comm);
  std::vector<double> none;
  comm->all_reduce<double>(none, ReduceOp::kSum);  // zero elements is still a valid collective
}

TEST(MpiCommunicator, BroadcastFromEveryRootDeliversTheRootsData) {
  auto comm = make_comm();
  for (int root = 0; root < comm->size(); ++root) {
    std::vector<int32_t> data(37, -1);
    if (comm->rank() == root) std::iota(data.begin(), data.end(), root * 7);
    comm->broadcast<int32_t>(data, root);
    for (int i = 0; i < 37; ++i) ASSERT_EQ(data[i], root * 7 + i) << "root " << root;
  }
  std::vector<int32_t> data(1);
  EXPECT_THROW(comm->broadcast<int32_t>(data, comm->size()), moe::Error);
}

TEST(MpiCommunicator, AllGatherPlacesEachRanksBlockInRankOrder) {
  auto comm = make_comm();
  const int n = comm->size();
  std::vector<double> send = {comm->rank() * 10.0, comm->rank() * 10.0 + 1, -1.0 * comm->rank()};
  std::vector<double> recv(3 * n);
  comm->all_gather<double>(send, recv);
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(recv[3 * r], r * 10.0);
    EXPECT_EQ(recv[3 * r + 1], r * 10.0 + 1);
    EXPECT_EQ(recv[3 * r + 2], -1.0 * r);
  }
  std::vector<double> wrong_size(3 * n + 1);
  EXPECT_THROW(comm->all_gather<double>(send, wrong_size), moe::Error);
}

TEST(MpiCommunicator, GatherVCollectsVariableBlocksOnTheRootOnly) {
  auto comm = make_comm();
  const int n = comm->size(), me = comm->rank();
  auto count_of = [](int r) { return static_cast<int64_t>((r * 3) % 4); };  // rank 0 sends none
  for (int root : {0, n - 1}) {
    std::vector<int64_t> send(count_of(me));
    for (int64_t i = 0; i < count_of(me); ++i) send[i] = me * 1000 + i;
    std::vector<int64_t> counts, recv;
    if (me == root) {
      for (int r = 0; r < n; ++r) counts.push_back(count_of(r));
      recv.assign(std::accumulate(counts.begin(), counts.end(), int64_t{0}), -1);
    }
    comm->gather_v<int64_t>(send, recv, counts, root);
    if (me == root) {
      int64_t at = 0, wrong = 0;
      for (int r = 0; r < n; ++r) {
        for (int64_t i = 0; i < count_of(r); ++i) wrong += recv[at++] == r * 1000 + i ? 0 : 1;
      }
      EXPECT_EQ(wrong, 0) << "root " << root;
    }
  }
}

TEST(MpiCommunicator, IdentityAndLocalRankOnOneHost) {
  auto comm = make_comm();
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(comm->rank(), rank);
  EXPECT_EQ(comm->size(), size);
  EXPECT_EQ(comm->local_rank(), rank) << "every test rank runs on this host";
  EXPECT_EQ(comm->local_size(), size);
  EXPECT_EQ(comm->node_layout().num_nodes, 1);
  EXPECT_EQ(comm->name(), "mpi");
  EXPECT_FALSE(comm->device_buffers());
  comm->barrier();
}

// --ranks-per-node replaces the detected nodes by blocks of G ranks, and a G that does not divide
// the world size is refused on every rank alike (so no rank is left waiting).
TEST(MpiCommunicator, RanksPerNodeOverridesTheDetectedNodes) {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int g = 1; g <= size; ++g) {
    CommOptions o;
    o.timeout_s = 10;
    o.ranks_per_node = g;
    if (size % g != 0) {
      EXPECT_THROW(make_mpi_communicator(o), moe::Error) << "G=" << g;
      continue;
    }
    auto comm = make_mpi_communicator(o);
    const NodeLayout& l = comm->node_layout();
    EXPECT_EQ(l.num_nodes, size / g);
    EXPECT_EQ(l.local_size, g);
    EXPECT_EQ(l.node, comm->rank() / g);
    EXPECT_EQ(comm->local_rank(), comm->rank() % g);
    comm->shutdown();
  }
}

TEST(MpiCommunicator, CallsAfterShutdownThrow) {
  auto comm = make_comm();
  comm->shutdown();
  comm->shutdown();  // idempotent
  EXPECT_THROW(comm->barrier(), moe::Error);
  std::vector<int64_t> v(comm->size());
  EXPECT_THROW(comm->all_to_all(v, v), moe::Error);
}

// Every rank of the test job runs on this machine: the arena exists for 2+ ranks (not for 1, nor
// for pretend nodes of --ranks-per-node), segments lie back to back, and what a rank wrote before
// publishing is what the others read after waiting. A counter nobody publishes times out.
TEST(MpiCommunicator, SharedArenaPublishesSegmentsToEveryRankAndTimesOut) {
  auto comm = make_comm(0.3);
  const int me = comm->rank(), n = comm->size();
  constexpr int64_t kBytes = 4096;
  std::shared_ptr<SharedArena> arena = comm->make_shared_arena(kBytes);
  ASSERT_EQ(arena != nullptr, n > 1);
  if (n > 1) {
    EXPECT_EQ(arena->segment_bytes(), kBytes);
    EXPECT_EQ(arena->segment(n - 1), arena->segment(0) + (n - 1) * kBytes);
    for (uint64_t round = 1; round <= 3; ++round) {
      auto* mine = reinterpret_cast<uint64_t*>(arena->segment(me));
      for (int i = 0; i < 16; ++i) mine[i] = round * 1000 + me * 16 + i;
      arena->publish(0, round);
      arena->wait_all(0, round, "test");
      int64_t wrong = 0;
      for (int r = 0; r < n; ++r) {
        const auto* theirs = reinterpret_cast<const uint64_t*>(arena->segment(r));
        for (int i = 0; i < 16; ++i) wrong += theirs[i] != round * 1000 + r * 16 + i;
      }
      EXPECT_EQ(wrong, 0) << "round " << round;
      comm->barrier();  // nobody overwrites before every rank read (the test's own reuse rule)
    }
    try {
      arena->wait_all(1, 1, "silence");
      ADD_FAILURE() << "waited for a counter nobody published";
    } catch (const moe::Error& e) {
      EXPECT_EQ(e.subsystem(), "comm");
      EXPECT_NE(e.message().find("shared-memory silence did not complete within 0.3 s on rank " +
                                 std::to_string(me)),
                std::string::npos)
          << e.message();
    }
  }
  comm->barrier();
  comm->shutdown();
  if (n > 1) {
    CommOptions o;
    o.ranks_per_node = 1;
    auto pretend = make_mpi_communicator(o);
    EXPECT_EQ(pretend->make_shared_arena(kBytes), nullptr) << "pretend nodes share no memory";
    pretend->shutdown();
  }
}

// One rank skips a collective: the others throw a named "comm" error once the timeout passes
// and refuse later calls. Then the skipping rank joins late (completing the abandoned operation)
// and everyone meets at a plain MPI barrier so the suite goes on cleanly.
void expect_timeout_when_rank0_is_late(const std::string& op_name,
                                       const std::function<void(Communicator&)>& op) {
  auto comm = make_comm(0.5);
  const int me = comm->rank(), n = comm->size();
  comm->barrier();
  if (me != 0) {
    try {
      op(*comm);
      ADD_FAILURE() << op_name << " completed although rank 0 never entered it";
    } catch (const moe::Error& e) {
      EXPECT_EQ(e.subsystem(), "comm");
      EXPECT_EQ(e.message(), fmt::format("collective {} did not complete within 0.5 s on rank {} "
                                         "(another rank failed or is stuck)",
                                         op_name, me));
    }
    try {
      comm->barrier();
      ADD_FAILURE() << "a communicator that timed out must refuse further collectives";
    } catch (const moe::Error& e) {
      EXPECT_NE(e.message().find("unusable since collective " + op_name + " timed out"),
                std::string::npos)
          << e.message();
    }
    int done = 1;
    MPI_Send(&done, 1, MPI_INT, 0, 77, MPI_COMM_WORLD);
  } else {
    for (int r = 1; r < n; ++r) {
      int done = 0;
      MPI_Recv(&done, 1, MPI_INT, r, 77, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    op(*comm);  // late: matches the operation the others abandoned
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiCommunicator, CollectiveSkippedByOneRankTimesOutOnTheOthers) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size < 2) GTEST_SKIP() << "needs at least 2 ranks";
  expect_timeout_when_rank0_is_late("barrier", [](Communicator& c) { c.barrier(); });

  // all_to_all_v keeps its count arrays alive for MPI after the timeout; buffers outlive it too.
  static std::vector<float> send, recv;
  static std::vector<int64_t> counts;
  counts.assign(size, 3);
  send.assign(3 * size, 1.0f);
  recv.assign(3 * size, 0.0f);
  expect_timeout_when_rank0_is_late(
      "all_to_all_v", [](Communicator& c) { c.all_to_all_v<float>(send, counts, recv, counts); });
  auto comm = make_comm();
  EXPECT_EQ(run_all_to_all_v<float>(*comm, 3), 0) << "a fresh communicator works afterwards";
}

}  // namespace
}  // namespace moe::parallel
