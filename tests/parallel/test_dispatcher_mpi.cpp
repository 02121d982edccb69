// Dispatcher under mpirun: dispatch -> grouped SwiGLU on each rank's own slots -> combine equals
// the single-process reference for this rank's tokens, for contiguous, round-robin, explicit maps
// with replicas and the shipped tiny-model maps; with ranks that have no tokens and experts that
// get none. Also the traffic numbers (dedup saves bytes when experts are collocated) and the
// load statistics reduced over ranks.
#include <gtest/gtest.h>

#include <filesystem>
#include <numeric>

#include "kernels/common/check.h"
#include "moe_layer_fixture.h"
#include "parallel/dispatcher.h"
#include "parallel/load_stats.h"

namespace moe::parallel {
namespace {

std::unique_ptr<Communicator> make_comm() {
  CommOptions options;
  options.timeout_s = 60;
  return make_mpi_communicator(options);
}

// Rank 1 has no tokens (when there is a rank 1); the others differ in count.
int64_t tokens_of(int rank) {
  return rank == 1 ? 0 : 3 + (7 * rank) % 11;
}

// Contiguous, plus expert 0 on every rank, expert 1 also on the last rank, expert 2 also on
// rank 0: replicas both on and off the source ranks.
std::vector<std::vector<int>> replicated_lists(int num_experts, int num_ranks) {
  auto lists = contiguous_placement(num_experts, num_ranks);
  auto add = [&](int r, int e) {
    if (std::find(lists[r].begin(), lists[r].end(), e) == lists[r].end()) lists[r].push_back(e);
  };
  for (int r = 0; r < num_ranks; ++r) add(r, 0);
  add(num_ranks - 1, 1);
  add(0, 2);
  return lists;
}

struct LayerCheck {
  double rel_diff = 0;
  int64_t rows_sent = 0, rows_received = 0, pairs = 0;
};

// The dispatcher must hold `placement` (a one-layer placement).
LayerCheck check_layer(Communicator& comm, kernels::Backend& backend, Dispatcher& dispatcher,
                       const Placement& placement, testing::ExpertBank& bank, int top_k,
                       const std::vector<int>& allowed, uint64_t seed) {
  const int me = comm.rank();
  const int64_t T = tokens_of(me), H = bank.hidden();
  auto routing = testing::make_routing(testing::mix_seed(seed, me), T, top_k, allowed);
  auto x = testing::random_floats(testing::mix_seed(seed + 1, me), static_cast<size_t>(T * H), 1.f);
  const testing::LayerRun r =
      testing::run_moe_layer(dispatcher, backend, placement, me, bank, x, T, routing);
  auto ref = testing::reference_moe_layer(backend, bank, x, T, top_k, routing);
  LayerCheck c;
  c.rel_diff = testing::relative_max_diff(r.y, ref);
  c.rows_sent = r.load.traffic.rows_sent_remote + r.load.traffic.rows_kept_local;
  c.rows_received = r.num_recv_rows;
  c.pairs = r.num_pairs;
  return c;
}

TEST(DispatcherMpi, CombineEqualsSingleProcessReferenceForEveryPlacement) {
  auto comm = make_comm();
  auto backend = kernels::make_backend("cpu", 0);
  const int n = comm->size();
  const int E = 24, k = 4;
  testing::ExpertBank bank(2024, 32, 16);
  Dispatcher dispatcher(*comm, *backend, bank.hidden(), k);  // reused: buffers grow and shrink
  std::vector<int> allowed;
  for (int e = 0; e < E; ++e) {
    if (e % 5 != 3) allowed.push_back(e);  // experts 3, 8, 13, 18, 23 get no token
  }
  struct Case {
    const char* name;
    std::vector<std::vector<int>> lists;
  };
  std::vector<Case> cases = {{"contiguous", contiguous_placement(E, n)},
                             {"round_robin", round_robin_placement(E, n)},
                             {"explicit_replicas", replicated_lists(E, n)}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    LayerPlacement::from_rank_experts(c.lists, E).validate(E, n, c.name);
    const Placement placement = testing::one_layer(c.lists, E);
    dispatcher.set_placement(placement);
    for (uint64_t seed : {1u, 2u}) {
      LayerCheck got = check_layer(*comm, *backend, dispatcher, placement, bank, k, allowed, seed);
      EXPECT_LE(got.rel_diff, 1e-5) << "seed " << seed;
      // Conservation over the job: every sent row arrives once; every pair is computed once.
      std::vector<int64_t> totals = {got.rows_sent, got.rows_received, got.pairs,
                                     tokens_of(comm->rank()) * k};
      comm->all_reduce<int64_t>(totals, ReduceOp::kSum);
      EXPECT_EQ(totals[0], totals[1]);
      EXPECT_EQ(totals[2], totals[3]);
    }
  }
}

// Experts whose output the test can predict exactly: the expert in slot s scales its row by
// 1 + e/8 (e its logical id). Combine must then give, bit for bit, the fixed-order fp32 sum
// y[t] = sum over t's rows in destination order of (sum over the row's routes in top-k order of
// w * out): received rows are stored out of order, and own rows skip the communicator, so this
// catches a row that lands in the wrong place or a sum taken in another order.
float expert_scale(int expert) {
  return 1.0f + static_cast<float>(expert) / 8.0f;
}

// Element i of the experts' input (the rows stay bf16 in bf16 dispatch).
float received_value(const DispatchHandle& r, int64_t i) {
  return r.recv_rows_bf16 != nullptr ? bf16_to_float(r.recv_rows_bf16[i]) : r.recv_rows[i];
}

// Stand-in experts: each pair's output is its row times expert_scale(the slot's expert).
std::vector<float> scaled_outputs(const DispatchHandle& r, const std::vector<int>& rank_experts,
                                  int64_t H) {
  const kernels::ExpertBatch& b = r.experts;
  std::vector<float> out(std::max<size_t>(1, static_cast<size_t>(b.max_pairs * H)));
  for (int slot = 0; slot < static_cast<int>(rank_experts.size()); ++slot) {
    const float scale = expert_scale(rank_experts[slot]);
    for (int64_t p = b.slot_begin[slot]; p < b.slot_begin[slot + 1]; ++p) {
      for (int64_t c = 0; c < H; ++c)
        out[p * H + c] = received_value(r, b.row_index[p] * H + c) * scale;
    }
  }
  return out;
}

// One step of a one-layer placement: dispatch, the stand-in experts, combine into y (all y0).
// bf16_input (optional): whether the experts got their rows as bf16. bf16_output: the outputs
// handed to the combine as bf16 rows (rounded), as bf16 experts write them. bf16_copy: the
// dispatch also gets x rounded to bf16 (as bf16 compute has it).
std::vector<float> exchange_once(Dispatcher& dispatcher, const std::vector<float>& x, int64_t T,
                                 const testing::Routing& routing,
                                 const std::vector<int>& rank_experts, int64_t H, float y0,
                                 bool* bf16_input = nullptr, bool bf16_output = false,
                                 bool bf16_copy = false) {
  dispatcher.begin_step();
  std::vector<bf16> x_bf16;
  if (bf16_copy) {
    for (const float v : x) x_bf16.push_back(float_to_bf16(v));
  }
  const DispatchHandle r =
      dispatcher.dispatch(0, x.data(), T, routing.ids.data(), routing.weights.data(),
                          bf16_copy ? x_bf16.data() : nullptr);
  if (bf16_input != nullptr) *bf16_input = r.recv_rows_bf16 != nullptr;
  const std::vector<float> out = scaled_outputs(r, rank_experts, H);
  std::vector<float> y(static_cast<size_t>(T * H), y0);
  if (bf16_output) {
    std::vector<bf16> out_bf16(out.size());
    for (size_t i = 0; i < out.size(); ++i) out_bf16[i] = float_to_bf16(out[i]);
    dispatcher.combine(out_bf16.data(), r, y.data());
  } else {
    dispatcher.combine(out.data(), r, y.data());
  }
  return y;
}

void expect_fixed_order_sum(Communicator& comm, kernels::ComputeDtype dtype, int64_t H) {
  kernels::BackendOptions bo;
  bo.compute_dtype = dtype;
  auto backend = kernels::make_backend(bo);
  const bool bf16_rows = dtype == kernels::ComputeDtype::kBF16;
  const int n = comm.size(), me = comm.rank();
  const int E = 24, k = 4;
  const int64_t T = tokens_of(me);
  std::vector<int> allowed(E);
  std::iota(allowed.begin(), allowed.end(), 0);
  Dispatcher dispatcher(comm, *backend, H, k);
  for (const auto& lists : {round_robin_placement(E, n), replicated_lists(E, n)}) {
    LayerPlacement::from_rank_experts(lists, E).validate(E, n, "bit_for_bit");
    const Placement placement = testing::one_layer(lists, E);
    dispatcher.set_placement(placement);
    // bf16 compute: the expert outputs as fp32 rows and as bf16 rows (rounded, as bf16 experts
    // write them), which the combine widens exactly.
    const std::vector<bool> bf16_outputs =
        bf16_rows ? std::vector<bool>{false, true} : std::vector<bool>{false};
    for (const bool bf16_out : bf16_outputs) {
      for (uint64_t seed : {3u, 4u, 5u}) {
        // Seed 5 in bf16 compute: the dispatch also gets x's bf16 copy (the same sums).
        const bool bf16_copy = bf16_rows && seed == 5u;
        auto routing = testing::make_routing(testing::mix_seed(seed, me), T, k, allowed);
        auto x = testing::random_floats(testing::mix_seed(seed + 7, me), static_cast<size_t>(T * H),
                                        1.f);
        bool bf16_input = false;
        const std::vector<float> y = exchange_once(dispatcher, x, T, routing, lists[me], H, 0.0f,
                                                   &bf16_input, bf16_out, bf16_copy);
        // Several ranks: bf16 rows of even width stay where they landed.
        EXPECT_EQ(bf16_input, bf16_rows && n > 1 && H % 2 == 0);

        // The expected sum, in the order the specification lays the rows out.
        const DispatchLayout L =
            build_dispatch_layout(placement.layer(0), me, routing.ids, routing.weights, T, k);
        std::vector<int> dest_of_row;
        for (int d = 0; d < n; ++d) dest_of_row.insert(dest_of_row.end(), L.send_counts[d], d);
        std::vector<float> want(static_cast<size_t>(T * H));
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t c = 0; c < H; ++c) {
            float acc = 0.0f;
            for (int64_t i = L.token_offsets[t]; i < L.token_offsets[t + 1]; ++i) {
              const int32_t row = L.token_rows[i];
              float partial = 0.0f;
              bool first_route = true;
              for (int j = 0; j < k; ++j) {
                const RouteEntry& e = L.send_routes[static_cast<size_t>(row) * k + j];
                if (e.local_slot < 0) continue;
                const float in = bf16_rows && n > 1 ? round_to_bf16(x[t * H + c]) : x[t * H + c];
                const float scaled = in * expert_scale(lists[dest_of_row[row]][e.local_slot]);
                const float o = bf16_out ? round_to_bf16(scaled) : scaled;
                partial = first_route ? e.weight * o : partial + e.weight * o;
                first_route = false;
              }
              if (bf16_rows && dest_of_row[row] != me) partial = round_to_bf16(partial);
              acc = i == L.token_offsets[t] ? partial : acc + partial;
            }
            want[t * H + c] = acc;
          }
        }
        EXPECT_EQ(y, want) << "seed " << seed << ", rank " << me << ", bf16 outputs " << bf16_out;
      }
    }
  }
}

// In bf16 compute on several ranks the rows travel as bf16 both ways: every row reaches the
// experts as a bf16 value (own rows included; in place at even width, widened at odd width) and
// the partial rows of other ranks come back rounded to bf16. One rank hands over the hidden rows
// themselves (the experts round them). bf16 compute also combines bf16 expert outputs.
TEST(DispatcherMpi, CombineIsTheFixedOrderFp32SumBitForBit) {
  auto comm = make_comm();
  struct Case {
    kernels::ComputeDtype dtype;
    int64_t hidden;
  };
  for (const Case& cs :
       {Case{kernels::ComputeDtype::kF32, 37}, Case{kernels::ComputeDtype::kBF16, 37},
        Case{kernels::ComputeDtype::kBF16, 40}}) {
    SCOPED_TRACE(::testing::Message()
                 << kernels::compute_dtype_name(cs.dtype) << ", H " << cs.hidden);
    expect_fixed_order_sum(*comm, cs.dtype, cs.hidden);
  }
}

// The shared arena against the messages: the same y bit for bit and the same collective counts,
// in fp32 and bf16 rows, with and without a spill (capacity 2), over consecutive calls (segments
// reused without barriers), and with more own rows than the capacity.
TEST(DispatcherMpi, SharedArenaGivesTheBitsOfTheMessages) {
  auto comm = make_comm();
  const int n = comm->size(), me = comm->rank();
  const int E = 16, k = 3;
  const int64_t H = 40;
  std::vector<int> allowed(E);
  std::iota(allowed.begin(), allowed.end(), 0);
  const auto lists = replicated_lists(E, n);
  const Placement placement = testing::one_layer(lists, E);
  for (const kernels::ComputeDtype dtype :
       {kernels::ComputeDtype::kF32, kernels::ComputeDtype::kBF16}) {
    kernels::BackendOptions bo;
    bo.compute_dtype = dtype;
    auto backend = kernels::make_backend(bo);
    for (const int32_t capacity : {0, 2}) {
      std::vector<std::vector<float>> ys[2];
      std::vector<int32_t> collectives[2];
      for (const bool shared : {false, true}) {
        DispatcherOptions o;
        o.capacity_rows = capacity;
        o.shared_memory = shared;
        Dispatcher dispatcher(*comm, *backend, H, k, o);
        dispatcher.set_placement(placement);
        for (uint64_t seed : {11u, 12u, 13u, 14u}) {
          const int64_t T = seed >= 13u ? 3 * tokens_of(me) : tokens_of(me);
          // Seed 14 routes to this rank's own experts only: more own rows than capacity 2.
          auto routing = testing::make_routing(testing::mix_seed(seed, me), T, k,
                                               seed == 14u ? lists[me] : allowed);
          auto x =
              testing::random_floats(testing::mix_seed(seed, me), static_cast<size_t>(T * H), 1.f);
          ys[shared].push_back(exchange_once(dispatcher, x, T, routing, lists[me], H, 0.5f));
          collectives[shared].push_back(dispatcher.collect_loads()[0].traffic.collectives);
        }
        EXPECT_EQ(dispatcher.uses_shared_arena(), shared && n > 1);
      }
      EXPECT_EQ(ys[1], ys[0]) << "capacity " << capacity << ", rank " << me;
      EXPECT_EQ(collectives[1], collectives[0]) << "capacity " << capacity;
    }
  }
}

TEST(DispatcherMpi, ShippedTinyExplicitMapsMatchTheReferenceAtTop8) {
  auto comm = make_comm();
  const int n = comm->size();
  const auto path = std::filesystem::path(MOE_SOURCE_DIR) / "configs" / "placements" /
                    ("explicit_tiny_" + std::to_string(n) + "ranks.yaml");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no shipped map for " << n << " ranks";
  auto backend = kernels::make_backend("cpu", 0);
  PlacementSpec spec = load_placement_spec(path.string());
  Placement placement = Placement::build(spec, {true, true, true}, 128, n);  // tiny: 3 MoE layers
  testing::ExpertBank bank(77, 64, 32);                                      // tiny widths
  Dispatcher dispatcher(*comm, *backend, bank.hidden(), 8);
  std::vector<int> allowed(120);
  std::iota(allowed.begin(), allowed.end(), 0);  // experts 120..127 idle
  for (int l = 0; l < placement.num_layers(); ++l) {
    const Placement layer = testing::one_layer(placement.layer(l).rank_experts, 128);
    dispatcher.set_placement(layer);
    LayerCheck got = check_layer(*comm, *backend, dispatcher, layer, bank, 8, allowed, 10 + l);
    EXPECT_LE(got.rel_diff, 1e-5) << "layer " << l;
  }
}

TEST(DispatcherMpi, CollocatedExpertsSendFewerBytesThanOneRowPerPair) {
  auto comm = make_comm();
  auto backend = kernels::make_backend("cpu", 0);
  const int n = comm->size(), me = comm->rank();
  const int k = 4, per_rank = 8, E = per_rank * n;
  const int64_t H = 32, T = 10;
  const Placement placement = testing::one_layer(contiguous_placement(E, n), E);
  // Token t's k experts all live on rank (me + 1 + t) % n: one row per token, k pairs.
  testing::Routing routing;
  for (int64_t t = 0; t < T; ++t) {
    const int dest = static_cast<int>((me + 1 + t) % n);
    for (int j = 0; j < k; ++j) {
      routing.ids.push_back(dest * per_rank + static_cast<int>((t + 2 * j) % per_rank));
      routing.weights.push_back(0.25f);
    }
  }
  testing::ExpertBank bank(5, H, 16);
  auto x = testing::random_floats(testing::mix_seed(9, me), static_cast<size_t>(T * H), 1.f);
  Dispatcher dispatcher(*comm, *backend, H, k);
  dispatcher.set_placement(placement);
  const testing::LayerRun r =
      testing::run_moe_layer(dispatcher, *backend, placement, me, bank, x, T, routing);
  EXPECT_LE(testing::relative_max_diff(
                r.y, testing::reference_moe_layer(*backend, bank, x, T, k, routing)),
            1e-5);

  const ExchangeStats& s = r.load.traffic;
  const int64_t row_bytes = H * 4, route_bytes = k * 8;
  int64_t remote_tokens = 0;
  for (int64_t t = 0; t < T; ++t) remote_tokens += (me + 1 + t) % n != me ? 1 : 0;
  EXPECT_EQ(s.rows_sent_remote, remote_tokens);
  EXPECT_EQ(s.rows_kept_local, T - remote_tokens);
  EXPECT_EQ(s.pairs_remote, remote_tokens * k);
  EXPECT_EQ(s.rows_received, r.num_recv_rows);
  // Rows this rank kept are the rows it received from itself.
  const int64_t recv_remote = r.num_recv_rows - s.rows_kept_local;
  EXPECT_EQ(s.bytes_sent_remote,
            remote_tokens * (row_bytes + route_bytes) + recv_remote * row_bytes);
  EXPECT_EQ(s.bytes_remote_without_dedup,
            remote_tokens * k * (row_bytes + 8) + recv_remote * k * row_bytes);

  // The dispatcher's counters are the specification's (local_layer_load of its layout).
  const LayerLoad spec = local_layer_load(
      build_dispatch_layout(placement.layer(0), me, routing.ids, routing.weights, T, k), s);
  EXPECT_EQ(r.load.tokens_per_expert, spec.tokens_per_expert);
  EXPECT_EQ(r.load.tokens_per_rank, spec.tokens_per_rank);
  EXPECT_EQ(r.load.rows_per_rank, spec.rows_per_rank);
  ExchangeStats job = sum_over_ranks(*comm, {r.load}).at(0).traffic;
  if (n > 1) {
    EXPECT_GT(job.bytes_sent_remote, 0);
    EXPECT_LT(job.bytes_sent_remote, job.bytes_remote_without_dedup);
  } else {
    EXPECT_EQ(job.bytes_sent_remote, 0);
    EXPECT_EQ(job.bytes_remote_without_dedup, 0);
  }
  EXPECT_EQ(job.rows_sent_remote + job.rows_kept_local, job.rows_received);
}

TEST(DispatcherMpi, EveryRankWithoutTokensStillCompletesTheExchange) {
  auto comm = make_comm();
  auto backend = kernels::make_backend("cpu", 0);
  const int n = comm->size();
  const Placement placement = testing::one_layer(round_robin_placement(8, n), 8);
  testing::ExpertBank bank(3, 16, 8);
  Dispatcher dispatcher(*comm, *backend, 16, 2);
  dispatcher.set_placement(placement);
  const testing::LayerRun r = testing::run_moe_layer(dispatcher, *backend, placement, comm->rank(),
                                                     bank, {}, 0, testing::Routing{});
  EXPECT_TRUE(r.y.empty());
  EXPECT_EQ(r.num_recv_rows, 0);
  EXPECT_EQ(r.load.traffic.bytes_sent_remote, 0);
}

// The node-first exchange on every node size dividing the world (--ranks-per-node rehearsal):
// the reference result (it sums inside the node first, so only to fp32 rounding of the flat
// order), and the rows that cross nodes counted from the routing: flat sends one per (token,
// rank on another node), node-first one per (token, other node).
TEST(DispatcherMpi, NodeFirstExchangeEqualsTheReferenceAndCrossesEachNodeOnce) {
  auto world = make_comm();
  const int n = world->size(), me = world->rank();
  const int E = 24, k = 4;
  testing::ExpertBank bank(2025, 32, 16);
  std::vector<int> allowed;
  for (int e = 0; e < E; ++e) {
    if (e % 5 != 3) allowed.push_back(e);
  }
  auto backend = kernels::make_backend("cpu", 0);
  for (int g = 1; g <= n; ++g) {
    if (n % g != 0) continue;
    SCOPED_TRACE("ranks per node " + std::to_string(g));
    CommOptions options;
    options.timeout_s = 60;
    options.ranks_per_node = g;
    auto comm = make_mpi_communicator(options);
    DispatcherOptions hier, flat;
    hier.exchange = ExchangeKind::kHierarchical;
    flat.exchange = ExchangeKind::kFlat;
    Dispatcher node_first(*comm, *backend, bank.hidden(), k, hier);
    Dispatcher direct(*comm, *backend, bank.hidden(), k, flat);
    EXPECT_EQ(node_first.exchange(), n > 1 ? ExchangeKind::kHierarchical : ExchangeKind::kFlat);
    // The default: node-first when there are several nodes.
    EXPECT_EQ(Dispatcher(*comm, *backend, bank.hidden(), k).exchange(),
              n / g > 1 ? ExchangeKind::kHierarchical : ExchangeKind::kFlat);
    for (const auto& lists :
         {contiguous_placement(E, n), round_robin_placement(E, n), replicated_lists(E, n)}) {
      const Placement placement = testing::one_layer(lists, E);
      node_first.set_placement(placement);
      direct.set_placement(placement);
      const LayerCheck got =
          check_layer(*comm, *backend, node_first, placement, bank, k, allowed, 5);
      EXPECT_LE(got.rel_diff, 1e-5);
      std::vector<int64_t> pairs = {got.pairs, tokens_of(me) * k};
      comm->all_reduce<int64_t>(pairs, ReduceOp::kSum);
      EXPECT_EQ(pairs[0], pairs[1]);  // every pair computed once
    }
    // Without replicas the destinations are fixed: count the rows that cross nodes.
    const Placement placement = testing::one_layer(round_robin_placement(E, n), E);
    node_first.set_placement(placement);
    direct.set_placement(placement);
    const int64_t T = tokens_of(me);
    auto routing = testing::make_routing(testing::mix_seed(6, me), T, k, allowed);
    int64_t flat_rows = 0, node_rows = 0;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int> ranks, nodes;
      for (int j = 0; j < k; ++j) {
        const int d = routing.ids[t * k + j] % n;  // round robin
        if (std::find(ranks.begin(), ranks.end(), d) == ranks.end()) ranks.push_back(d);
        if (d / g != me / g && std::find(nodes.begin(), nodes.end(), d / g) == nodes.end())
          nodes.push_back(d / g);
      }
      for (int d : ranks) flat_rows += d / g != me / g ? 1 : 0;
      node_rows += static_cast<int64_t>(nodes.size());
    }
    auto x = testing::random_floats(testing::mix_seed(8, me), static_cast<size_t>(T * 32), 1.f);
    const testing::LayerRun a =
        testing::run_moe_layer(node_first, *backend, placement, me, bank, x, T, routing);
    const testing::LayerRun b =
        testing::run_moe_layer(direct, *backend, placement, me, bank, x, T, routing);
    EXPECT_EQ(b.load.traffic.rows_sent_inter_node, flat_rows);
    EXPECT_EQ(a.load.traffic.rows_sent_inter_node, n > 1 ? node_rows : 0);
    EXPECT_LE(testing::relative_max_diff(a.y, b.y), 1e-5);
    // The per-rank loads are the flat exchange's once summed over the job.
    const LayerLoad ja = sum_over_ranks(*comm, {a.load}).at(0);
    const LayerLoad jb = sum_over_ranks(*comm, {b.load}).at(0);
    EXPECT_EQ(ja.tokens_per_rank, jb.tokens_per_rank);
    EXPECT_EQ(ja.tokens_per_expert, jb.tokens_per_expert);
    comm->shutdown();
  }
}

TEST(DispatcherMpi, PlacementForAnotherWorldSizeIsRejectedOnEveryRank) {
  auto comm = make_comm();
  auto backend = kernels::make_backend("cpu", 0);
  const int n = comm->size();
  const Placement placement = testing::one_layer(contiguous_placement(8, n + 1), 8);
  Dispatcher dispatcher(*comm, *backend, 16, 2);
  EXPECT_THROW(dispatcher.set_placement(placement), moe::Error);
  comm->barrier();
}

TEST(LoadStatsMpi, LayerLoadAndSpreadsAreSummedOverRanks) {
  auto comm = make_comm();
  const int n = comm->size(), me = comm->rank();
  const int E = 12, k = 3;
  auto placement = LayerPlacement::from_rank_experts(round_robin_placement(E, n), E);
  std::vector<int> all(E);
  std::iota(all.begin(), all.end(), 0);
  const int64_t T = tokens_of(me);
  auto routing = testing::make_routing(testing::mix_seed(31, me), T, k, all);
  DispatchLayout L = build_dispatch_layout(placement, me, routing.ids, routing.weights, T, k);
  LayerLoad load = sum_over_ranks(*comm, {local_layer_load(L)}).at(0);

  // Expected totals: every rank's layout, rebuilt here from the same seeds.
  std::vector<int64_t> per_expert(E, 0), per_rank(n, 0), rows(n, 0);
  for (int r = 0; r < n; ++r) {
    auto other = testing::make_routing(testing::mix_seed(31, r), tokens_of(r), k, all);
    DispatchLayout Lr =
        build_dispatch_layout(placement, r, other.ids, other.weights, tokens_of(r), k);
    for (int e = 0; e < E; ++e) per_expert[e] += Lr.expert_tokens[e];
    for (int d = 0; d < n; ++d) {
      per_rank[d] += Lr.pairs_per_rank[d];
      rows[d] += Lr.send_counts[d];
    }
  }
  EXPECT_EQ(load.tokens_per_expert, per_expert);
  EXPECT_EQ(load.tokens_per_rank, per_rank);
  EXPECT_EQ(load.rows_per_rank, rows);
  EXPECT_DOUBLE_EQ(load.balancedness(), balancedness(per_rank));
  EXPECT_DOUBLE_EQ(load.max_violation(), max_violation(per_expert));

  std::vector<double> values = {static_cast<double>(me), -2.0 * me};
  RankSpread spread = spread_over_ranks(*comm, values);
  EXPECT_DOUBLE_EQ(spread.max[0], n - 1);
  EXPECT_DOUBLE_EQ(spread.mean[0], (n - 1) / 2.0);
  EXPECT_DOUBLE_EQ(spread.max[1], 0.0);
  EXPECT_DOUBLE_EQ(spread.mean[1], -(n - 1.0));
}

}  // namespace
}  // namespace moe::parallel

namespace moe::parallel {
namespace {

// The one reduction the reports use, on a case computed by hand: 3 ranks, rank 1 without
// tokens, expert 3 replicated on ranks 1 and 2 (E = 4, top-2). Each rank's contribution is
// written out as its layout gives it (local_layer_load is tested against layouts elsewhere):
//   rank 0, token 0 -> {0, 1}: pairs on ranks 0 and 1, one row each
//   rank 0, token 1 -> {3, 2}: expert 3 served by its replica on rank 2, expert 2 on rank 2:
//                              two pairs, one deduplicated row
//   rank 2, token 0 -> {3, 0}: expert 3 served on rank 2 itself, expert 0 on rank 0
TEST(LoadStatsMpi, ReductionMatchesAHandComputedThreeRankCase) {
  auto comm = make_comm();
  if (comm->size() != 3) GTEST_SKIP() << "hand-computed for 3 ranks";
  const int me = comm->rank();
  LayerLoad local;
  local.tokens_per_expert = {0, 0, 0, 0};
  local.tokens_per_rank = {0, 0, 0};
  local.rows_per_rank = {0, 0, 0};
  if (me == 0) {
    local.tokens_per_expert = {1, 1, 1, 1};
    local.tokens_per_rank = {1, 1, 2};
    local.rows_per_rank = {1, 1, 1};
  } else if (me == 2) {
    local.tokens_per_expert = {1, 0, 0, 1};
    local.tokens_per_rank = {1, 0, 1};
    local.rows_per_rank = {1, 0, 1};
  }
  local.traffic.rows_sent_remote = me + 1;  // any per-rank counter: the reduction must sum it
  local.traffic.bytes_sent_remote = 10 * (me + 1);
  // Two layers in one call: the second is the first again, so the packing must keep them apart.
  LayerLoad other = local;
  other.tokens_per_expert[0] += 5;
  const std::vector<LayerLoad> job = sum_over_ranks(*comm, {local, other});
  ASSERT_EQ(job.size(), 2u);
  for (const LayerLoad& l : job) {
    EXPECT_EQ(l.tokens_per_rank, (std::vector<int64_t>{2, 1, 3}));
    EXPECT_EQ(l.rows_per_rank, (std::vector<int64_t>{2, 1, 2}));
    EXPECT_EQ(l.traffic.rows_sent_remote, 1 + 2 + 3);
    EXPECT_EQ(l.traffic.bytes_sent_remote, 60);
    EXPECT_DOUBLE_EQ(l.balancedness(), 2.0 / 3.0);
  }
  EXPECT_EQ(job[0].tokens_per_expert, (std::vector<int64_t>{2, 1, 1, 2}));
  EXPECT_DOUBLE_EQ(job[0].max_violation(), 2.0 / 1.5 - 1.0);
  EXPECT_EQ(job[1].tokens_per_expert, (std::vector<int64_t>{17, 1, 1, 2}));
  EXPECT_DOUBLE_EQ(job[1].max_violation(), 17.0 / 5.25 - 1.0);
}

// Ranks that recorded different numbers of layers fail together with a message (none waits).
TEST(LoadStatsMpi, RanksWithDifferentLayerCountsFailTogether) {
  auto comm = make_comm();
  if (comm->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  LayerLoad one;
  one.tokens_per_expert = {1, 2};
  std::vector<LayerLoad> mine(comm->rank() == 0 ? 2 : 1, one);
  EXPECT_THROW(sum_over_ranks(*comm, mine), moe::Error);
  comm->barrier();
}

}  // namespace
}  // namespace moe::parallel
