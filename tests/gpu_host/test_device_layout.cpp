// The expert-parallel layout every backend runs (kernels/common/moe_layout.h: the per-thread bodies
// the CUDA kernels in kernels/cuda/moe_layout.cu run and the host backends run in loops) against
// its sequential specification (parallel::build_dispatch_layout, parallel::group_by_slot) on
// random routings: uneven placements, replicated experts, ranks with no slots, empty batches,
// batches over many chunks. Also the combine bodies and the host backend's combine ops against
// the naive fixed-order weighted sum.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/moe_layout.h"
#include "kernels/cpu/reference.h"
#include "parallel/dispatch_layout.h"
#include "parallel/placement.h"

namespace moe {
namespace {

namespace layout = kernels::layout;
using parallel::LayerPlacement;
using parallel::RouteEntry;

// A random placement: every expert on 1..max_replicas distinct ranks, some ranks possibly empty.
LayerPlacement random_placement(std::mt19937& rng, int num_experts, int num_ranks, int max_replicas,
                                bool leave_rank_empty) {
  std::vector<std::vector<int>> rank_experts(num_ranks);
  const int usable = leave_rank_empty && num_ranks > 1 ? num_ranks - 1 : num_ranks;
  for (int e = 0; e < num_experts; ++e) {
    const int replicas = 1 + static_cast<int>(rng() % std::min(max_replicas, usable));
    std::vector<int> ranks(usable);
    std::iota(ranks.begin(), ranks.end(), 0);
    std::shuffle(ranks.begin(), ranks.end(), rng);
    for (int i = 0; i < replicas; ++i) rank_experts[ranks[i]].push_back(e);
  }
  for (auto& list : rank_experts) std::shuffle(list.begin(), list.end(), rng);  // uneven order
  return LayerPlacement::from_rank_experts(rank_experts, num_experts);
}

// Top-k ids (distinct per token, skewed towards low ids) and weights.
void random_routing(std::mt19937& rng, int64_t tokens, int top_k, int num_experts,
                    std::vector<int32_t>& ids, std::vector<float>& weights) {
  ids.resize(static_cast<size_t>(tokens * top_k));
  weights.resize(ids.size());
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> picked;
    while (static_cast<int>(picked.size()) < top_k) {
      const float x = u(rng);
      const auto e = static_cast<int32_t>(x * x * static_cast<float>(num_experts)) % num_experts;
      if (std::find(picked.begin(), picked.end(), e) == picked.end()) picked.push_back(e);
    }
    for (int j = 0; j < top_k; ++j) {
      ids[t * top_k + j] = picked[j];
      weights[t * top_k + j] = u(rng);
    }
  }
}

// The flat table RoutingTable points into, built as Dispatcher::set_placement does.
struct HostTable {
  std::vector<int32_t> begin{0}, ranks, slots, num_slots;
  kernels::RoutingTable table;
  HostTable(const LayerPlacement& lp, int rank) {
    int max_slots = 0;
    for (const auto& replicas : lp.expert_slots) {
      for (const parallel::Slot& s : replicas) {
        ranks.push_back(s.rank);
        slots.push_back(s.local_slot);
      }
      begin.push_back(static_cast<int32_t>(ranks.size()));
    }
    for (int d = 0; d < lp.num_ranks(); ++d) {
      num_slots.push_back(lp.num_local_slots(d));
      max_slots = std::max(max_slots, lp.num_local_slots(d));
    }
    table.num_experts = lp.num_experts();
    table.num_ranks = lp.num_ranks();
    table.rank = rank;
    table.max_local_slots = max_slots;
    table.replica_begin = begin.data();
    table.replica_rank = ranks.data();
    table.replica_slot = slots.data();
    table.rank_num_slots = num_slots.data();
  }
};

// Storage of one emulated source layout.
struct SourceRun {
  std::vector<int32_t> chunk_expert, pair_before, chunk_dest, chunk_rows, pair_dest, pair_slot,
      token_ndest, token_dest, token_rows_before, token_dest_before, expert_total, header,
      send_offsets, send_token, token_offsets, token_rows;
  std::vector<RouteEntry> send_routes;
  int32_t error = -7;  // emulate() must reset it
  layout::SourceLayoutView v;

  SourceRun(const kernels::RoutingTable& table, const std::vector<int32_t>& ids,
            const std::vector<float>& weights, int32_t tokens, int32_t k,
            int32_t chunk = layout::kDeviceLayoutChunk) {
    const int32_t E = table.num_experts, N = table.num_ranks;
    const int32_t C = layout::num_chunks(tokens, chunk);
    const int32_t max_rows = tokens * std::min(k, N);
    // Poisoned scratch and outputs: every entry read must have been written first.
    const auto sized = [](std::vector<int32_t>& a, int64_t n) { a.assign(n, -12345); };
    sized(chunk_expert, static_cast<int64_t>(C) * E);
    sized(pair_before, tokens * k);
    sized(chunk_dest, static_cast<int64_t>(C) * N);
    sized(chunk_rows, C);
    sized(pair_dest, tokens * k);
    sized(pair_slot, tokens * k);
    sized(token_ndest, tokens);
    sized(token_dest, tokens * k);
    sized(token_rows_before, tokens);
    sized(token_dest_before, tokens * k);
    sized(expert_total, E);
    sized(header, N * layout::header_width(table));
    sized(send_offsets, N + 1);
    sized(send_token, max_rows);
    sized(token_offsets, tokens + 1);
    sized(token_rows, max_rows);
    send_routes.assign(static_cast<size_t>(max_rows) * k, RouteEntry{-99, -99.0f});
    v.ids = ids.data();
    v.weights = weights.data();
    v.num_tokens = tokens;
    v.top_k = k;
    v.chunk_size = chunk;
    v.table = table;
    v.chunk_expert = chunk_expert.data();
    v.pair_before = pair_before.data();
    v.chunk_dest = chunk_dest.data();
    v.chunk_rows = chunk_rows.data();
    v.pair_dest = pair_dest.data();
    v.pair_slot = pair_slot.data();
    v.token_ndest = token_ndest.data();
    v.token_dest = token_dest.data();
    v.token_rows_before = token_rows_before.data();
    v.token_dest_before = token_dest_before.data();
    v.expert_total = expert_total.data();
    v.header = header.data();
    v.send_offsets = send_offsets.data();
    v.send_token = send_token.data();
    v.send_routes = send_routes.data();
    v.token_offsets = token_offsets.data();
    v.token_rows = token_rows.data();
    v.error = &error;
    layout::emulate(v);
  }
};

bool same_route(const RouteEntry& a, const RouteEntry& b) {
  return a.local_slot == b.local_slot && (a.local_slot < 0 || a.weight == b.weight);
}

// The chunk sizes the layout runs with: a device's, a host backend's, and one item per chunk.
constexpr int32_t kChunks[] = {layout::kDeviceLayoutChunk, layout::kHostLayoutChunk, 1};

// Every output of the emulated source layout equals the host layout's.
void expect_source_matches(const LayerPlacement& lp, int rank, const std::vector<int32_t>& ids,
                           const std::vector<float>& weights, int64_t tokens, int k,
                           int32_t chunk) {
  SCOPED_TRACE(testing::Message() << "chunk " << chunk);
  const parallel::DispatchLayout host =
      parallel::build_dispatch_layout(lp, rank, ids, weights, tokens, k);
  const HostTable ht(lp, rank);
  const SourceRun run(ht.table, ids, weights, static_cast<int32_t>(tokens), k, chunk);
  ASSERT_EQ(run.error, 0);
  const int N = lp.num_ranks(), W = layout::header_width(ht.table);
  const int64_t S = host.num_send_rows();
  int64_t max_remote_rows = 0;
  for (int d = 0; d < N; ++d) {
    if (d != rank) max_remote_rows = std::max(max_remote_rows, host.send_counts[d]);
  }
  for (int d = 0; d < N; ++d) {
    EXPECT_EQ(run.header[d * W + layout::kHeaderRows], host.send_counts[d]) << "rows to " << d;
    EXPECT_EQ(run.header[d * W + layout::kHeaderPairs], host.pairs_per_rank[d]) << "pairs to " << d;
    EXPECT_EQ(run.header[d * W + layout::kHeaderMaxRows], max_remote_rows) << "header of " << d;
    EXPECT_EQ(run.send_offsets[d + 1] - run.send_offsets[d], host.send_counts[d]);
  }
  for (int e = 0; e < lp.num_experts(); ++e) EXPECT_EQ(run.expert_total[e], host.expert_tokens[e]);
  ASSERT_EQ(run.send_offsets[N], S);
  for (int64_t r = 0; r < S; ++r) {
    ASSERT_EQ(run.send_token[r], host.send_token[r]) << "row " << r;
    for (int j = 0; j < k; ++j) {
      ASSERT_TRUE(same_route(run.send_routes[r * k + j], host.send_routes[r * k + j]))
          << "row " << r << " entry " << j;
    }
  }
  for (int64_t t = 0; t <= tokens; ++t) ASSERT_EQ(run.token_offsets[t], host.token_offsets[t]);
  for (int64_t i = 0; i < S; ++i) ASSERT_EQ(run.token_rows[i], host.token_rows[i]);

  // The header's per-slot pair counts are what each destination slot receives from this rank.
  for (int d = 0; d < N; ++d) {
    std::vector<int32_t> per_slot(lp.num_local_slots(d), 0);
    int64_t first = 0;
    for (int q = 0; q < d; ++q) first += host.send_counts[q];
    for (int64_t r = first; r < first + host.send_counts[d]; ++r) {
      for (int j = 0; j < k; ++j) {
        const int32_t s = host.send_routes[r * k + j].local_slot;
        if (s >= 0) ++per_slot[s];
      }
    }
    for (int s = 0; s < lp.num_local_slots(d); ++s) {
      EXPECT_EQ(run.header[d * W + layout::kHeaderSlots + s], per_slot[s])
          << "rank " << d << " slot " << s;
    }
    for (int s = lp.num_local_slots(d); s < ht.table.max_local_slots; ++s) {
      EXPECT_EQ(run.header[d * W + layout::kHeaderSlots + s], 0);
    }
  }
}

TEST(DeviceLayout, SourceSideMatchesHostLayoutOnRandomRoutings) {
  std::mt19937 rng(20261130);
  struct Case {
    int experts, ranks, replicas, k;
    int64_t tokens;
    bool empty_rank;
  };
  const Case cases[] = {
      {8, 1, 1, 2, 5, false},     // one rank
      {16, 2, 1, 4, 37, false},   // two chunks
      {16, 3, 3, 4, 100, false},  // replicas on every rank
      {32, 4, 2, 8, 257, true},   // a rank with no slots, many chunks
      {128, 8, 3, 8, 64, false},  // Qwen3 shape, decode-sized batch
      {128, 8, 1, 8, 1, false},   // batch 1
      {64, 5, 4, 6, 300, true},   // odd sizes
      {4, 4, 4, 1, 33, false},    // top-1, every expert on every rank
      {12, 3, 2, 3, 0, false},    // empty batch
  };
  for (const Case& c : cases) {
    for (int trial = 0; trial < 3; ++trial) {
      const LayerPlacement lp = random_placement(rng, c.experts, c.ranks, c.replicas, c.empty_rank);
      std::vector<int32_t> ids;
      std::vector<float> weights;
      random_routing(rng, c.tokens, c.k, c.experts, ids, weights);
      for (int rank = 0; rank < c.ranks; ++rank) {
        SCOPED_TRACE(testing::Message()
                     << c.experts << " experts, " << c.ranks << " ranks, " << c.tokens
                     << " tokens, k " << c.k << ", rank " << rank << ", trial " << trial);
        for (int32_t chunk : kChunks) {
          expect_source_matches(lp, rank, ids, weights, c.tokens, c.k, chunk);
        }
      }
    }
  }
}

TEST(DeviceLayout, BadExpertIdIsFlaggedWithoutOutOfBoundsWrites) {
  std::mt19937 rng(7);
  const LayerPlacement lp = random_placement(rng, 8, 2, 1, false);
  const HostTable ht(lp, 0);
  std::vector<int32_t> ids{1, 2, -1, 3, 9, 4};  // pair 2: -1 (non-finite logits), pair 4: 9 >= 8
  std::vector<float> weights(ids.size(), 0.5f);
  const SourceRun run(ht.table, ids, weights, 3, 2);
  EXPECT_EQ(run.error, 1 + 2);  // the first bad pair
}

// Storage of one emulated receiver grouping (poisoned, as SourceRun).
struct GroupingRun {
  std::vector<int32_t> chunk_slot, entry_before, slot_begin, row_index, pair_of_entry;
  int32_t error = -3;
  layout::SlotGroupingView g;

  GroupingRun(const std::vector<RouteEntry>& routes, int32_t rows, int k, int32_t slots,
              const std::vector<int32_t>* row_at, int32_t chunk = layout::kDeviceLayoutChunk)
      : chunk_slot(static_cast<size_t>(layout::num_chunks(rows, chunk)) * slots, -5),
        entry_before(static_cast<size_t>(rows) * k, -5),
        slot_begin(slots + 1, -5),
        row_index(static_cast<size_t>(rows) * k, -5),
        pair_of_entry(static_cast<size_t>(rows) * k, -5) {
    g.routes = routes.data();
    g.num_rows = rows;
    g.top_k = k;
    g.chunk_size = chunk;
    g.num_slots = slots;
    g.row_at = row_at != nullptr ? row_at->data() : nullptr;
    g.chunk_slot = chunk_slot.data();
    g.entry_before = entry_before.data();
    g.slot_begin = slot_begin.data();
    g.row_index = row_index.data();
    g.pair_of_entry = pair_of_entry.data();
    g.error = &error;
    layout::emulate(g);
  }
};

// Emulated receiver grouping of one received route block against group_by_slot, with received
// rows placed where row_at says (nullptr: row r at r), as the dispatcher's receive lays them out.
void expect_grouping_matches(const std::vector<RouteEntry>& routes, int32_t rows, int k,
                             int32_t slots, const std::vector<int32_t>* row_at, int32_t chunk) {
  SCOPED_TRACE(testing::Message() << "chunk " << chunk);
  const parallel::SlotGroups host = parallel::group_by_slot(routes, rows, k, slots);
  const GroupingRun run(routes, rows, k, slots, row_at, chunk);
  const int32_t error = run.error;
  const std::vector<int32_t>& slot_begin = run.slot_begin;
  const std::vector<int32_t>& row_index = run.row_index;
  const std::vector<int32_t>& pair_of_entry = run.pair_of_entry;
  ASSERT_EQ(error, 0);
  for (int32_t s = 0; s <= slots; ++s) ASSERT_EQ(slot_begin[s], host.slot_begin[s]) << "slot " << s;
  for (int64_t p = 0; p < host.num_pairs(); ++p) {
    const int32_t r = host.row_index[p];
    ASSERT_EQ(row_index[p], row_at != nullptr ? (*row_at)[r] : r) << "pair " << p;
  }
  for (int64_t i = 0; i < static_cast<int64_t>(rows) * k; ++i) {
    ASSERT_EQ(pair_of_entry[i], host.pair_of_entry[i]) << "entry " << i;
  }
}

TEST(DeviceLayout, ReceiverGroupingMatchesGroupBySlot) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 40; ++trial) {
    const int k = 1 + static_cast<int>(rng() % 8);
    const int32_t rows = trial == 0 ? 0 : static_cast<int32_t>(rng() % 300);
    const int32_t slots = 1 + static_cast<int32_t>(rng() % 40);
    std::vector<RouteEntry> routes(static_cast<size_t>(rows) * k);
    for (auto& e : routes) {
      // About half the entries are for other ranks (-1); slots skewed to low ids.
      e = rng() % 2 ? RouteEntry{static_cast<int32_t>((rng() % slots) / (1 + rng() % 2)), 0.25f}
                    : RouteEntry{};
    }
    // Rows placed anywhere (distinct places, with gaps), or in received order.
    std::vector<int32_t> row_at(static_cast<size_t>(rows));
    std::iota(row_at.begin(), row_at.end(), 0);
    std::shuffle(row_at.begin(), row_at.end(), rng);
    for (int32_t& a : row_at) a = 3 * a + static_cast<int32_t>(rng() % 3);
    SCOPED_TRACE(testing::Message() << rows << " rows, k " << k << ", " << slots << " slots");
    for (int32_t chunk : kChunks) {
      expect_grouping_matches(routes, rows, k, slots, trial % 4 == 0 ? nullptr : &row_at, chunk);
    }
  }
}

TEST(DeviceLayout, ReceivedSlotOutOfRangeIsFlagged) {
  const std::vector<RouteEntry> routes{{0, 1.0f}, {5, 1.0f}, {1, 1.0f}, {-1, 0.0f}};
  const GroupingRun run(routes, 2, 2, 2, nullptr);
  EXPECT_EQ(run.error, 1 + 1);
  EXPECT_EQ(run.pair_of_entry[1], -1);  // dropped, not written out of bounds
  EXPECT_EQ(run.slot_begin[2], 2);
}

// The combine bodies give the naive fixed-order sums bit for bit (same terms, same order), whether
// a call covers one column (a CUDA thread) or a whole row (the CPU), in fp32 and in bf16 rows
// (the sums rounded once, when stored), from fp32 and from bf16 expert outputs; the own rows'
// sums are formed inside the final sum.
// The CPU backend (a HostBackend: host memory, so host vectors are its buffers).
kernels::Backend& host_backend() {
  static const std::unique_ptr<kernels::Backend> backend = kernels::make_backend({});
  return *backend;
}

TEST(DeviceLayout, CombineBodiesAndHostOpsMatchWeightedRowSum) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const int k = 4;
  const int32_t rows = 23, own_begin = 7, own_rows = 5;
  const int64_t width = 37;
  std::vector<RouteEntry> routes(rows * k);
  std::vector<int32_t> pair_of_entry(rows * k, -1);
  int32_t pairs = 0;
  for (int32_t i = 0; i < rows * k; ++i) {
    if (rng() % 3 == 0 && i % k != 0) continue;  // every row keeps its first entry
    routes[i] = RouteEntry{0, n01(rng)};
    pair_of_entry[i] = pairs++;
  }
  // Expert outputs in fp32, and in bf16 (as bf16 experts write them): the bodies read either,
  // each value widened exactly.
  std::vector<float> expert_out_f32(static_cast<size_t>(pairs) * width);
  for (float& x : expert_out_f32) x = n01(rng);
  std::vector<bf16> expert_out_bf16(expert_out_f32.size());
  for (size_t i = 0; i < expert_out_f32.size(); ++i) {
    expert_out_bf16[i] = float_to_bf16(expert_out_f32[i]);
  }
  for (kernels::WireDtype expert_dtype : {kernels::WireDtype::kF32, kernels::WireDtype::kBF16}) {
    SCOPED_TRACE(std::string("expert outputs ") + kernels::wire_dtype_name(expert_dtype));
    const bool f32_out = expert_dtype == kernels::WireDtype::kF32;
    const layout::ExpertRows expert_rows = f32_out ? layout::ExpertRows(expert_out_f32.data())
                                                   : layout::ExpertRows(expert_out_bf16.data());
    // The values the combine reads.
    std::vector<float> expert_out(expert_out_f32.size());
    for (size_t i = 0; i < expert_out.size(); ++i) {
      expert_out[i] = f32_out ? expert_out_f32[i] : bf16_to_float(expert_out_bf16[i]);
    }
    // The naive sum over the entries of each row.
    std::vector<int64_t> offsets{0};
    std::vector<int32_t> src;
    std::vector<float> w;
    for (int32_t r = 0; r < rows; ++r) {
      for (int j = 0; j < k; ++j) {
        if (pair_of_entry[r * k + j] < 0) continue;
        src.push_back(pair_of_entry[r * k + j]);
        w.push_back(routes[r * k + j].weight);
      }
      offsets.push_back(static_cast<int64_t>(src.size()));
    }
    std::vector<float> want(static_cast<size_t>(rows) * width);
    kernels::cpu::reference::weighted_row_sum(expert_out.data(), width, src.data(), w.data(),
                                              offsets.data(), rows, want.data());
    for (kernels::WireDtype dtype : {kernels::WireDtype::kF32, kernels::WireDtype::kBF16}) {
      SCOPED_TRACE(kernels::wire_dtype_name(dtype));
      const int64_t row_bytes = kernels::wire::row_bytes(dtype, width);
      std::vector<unsigned char> by_row((rows - own_rows) * row_bytes, 0xAB), by_column(by_row);
      layout::PartialRowsView v{
          routes.data(), pair_of_entry.data(), expert_rows, width, k, rows, own_begin, own_rows,
          dtype,         by_row.data()};
      for (int32_t q = 0; q < rows - own_rows; ++q) {
        layout::partial_row_span<layout::kHostCombineBlock>(v, q, 0, width);
      }
      v.out = by_column.data();
      for (int32_t q = 0; q < rows - own_rows; ++q) {
        for (int64_t c = 0; c < width; ++c) layout::partial_row_span<1>(v, q, c, c + 1);
      }
      EXPECT_EQ(by_row, by_column);
      // The host backend's op (whole-row loops) gives the bodies' bits.
      // Same fill as by_row: a bf16 row of odd width ends in 2 padding bytes nobody writes.
      std::vector<unsigned char> by_backend(by_row.size(), 0xAB);
      v.out = by_backend.data();
      host_backend().combine_partial(v);
      EXPECT_EQ(by_backend, by_row);
      for (int32_t q = 0; q < rows - own_rows; ++q) {
        const int32_t r = q < own_begin ? q : q + own_rows;  // the own block is left out
        for (int64_t c = 0; c < width; ++c) {
          const float expect = dtype == kernels::WireDtype::kF32
                                   ? want[r * width + c]
                                   : round_to_bf16(want[r * width + c]);
          ASSERT_EQ(kernels::wire::decode(dtype, by_row.data() + q * row_bytes, width, c), expect)
              << "row " << r << " column " << c;
        }
      }
    }

    // Final sum + residual: tokens with rows kept on this rank (summed from expert_out) and rows
    // returned by others (stored in the wire type).
    // The last two tokens have two rows each, own then returned and returned then own (the
    // host's one-pass shapes for 2 ranks).
    const int32_t tokens = 11, own_send_begin = 4;
    std::vector<int32_t> token_offsets{0}, token_rows;
    const int32_t send_rows = 14;  // rows 4..8 are own: received rows own_begin.. of this rank
    for (int32_t t = 0; t < tokens - 2; ++t) {
      for (int32_t r = 0; r < send_rows; ++r) {
        if ((r + t) % 4 == 0) token_rows.push_back(r);
      }
      if (token_rows.size() == static_cast<size_t>(token_offsets.back())) token_rows.push_back(t);
      token_offsets.push_back(static_cast<int32_t>(token_rows.size()));
    }
    for (const auto& rows : {std::vector<int32_t>{4, 10}, std::vector<int32_t>{2, 6}}) {
      token_rows.insert(token_rows.end(), rows.begin(), rows.end());
      token_offsets.push_back(static_cast<int32_t>(token_rows.size()));
    }
    std::vector<float> returned_f32(static_cast<size_t>(send_rows - own_rows) * width),
        x(tokens * width);
    for (float& v : returned_f32) v = n01(rng);
    for (float& v : x) v = n01(rng);
    for (kernels::WireDtype dtype : {kernels::WireDtype::kF32, kernels::WireDtype::kBF16}) {
      SCOPED_TRACE(kernels::wire_dtype_name(dtype));
      const int64_t row_bytes = kernels::wire::row_bytes(dtype, width);
      std::vector<unsigned char> returned(returned_f32.size() / width * row_bytes);
      std::vector<float> widened(returned_f32.size());
      for (size_t i = 0; i < returned_f32.size() / width; ++i) {
        kernels::wire::encode_columns(dtype, returned_f32.data() + i * width,
                                      returned.data() + i * row_bytes, 0, width);
        for (int64_t c = 0; c < width; ++c) {
          widened[i * width + c] =
              kernels::wire::decode(dtype, returned.data() + i * row_bytes, width, c);
        }
      }
      const layout::CombineSources cs{.returned = returned.data(),
                                      .dtype = dtype,
                                      .own_send_begin = own_send_begin,
                                      .own_rows = own_rows,
                                      .own_recv_begin = own_begin,
                                      .routes = routes.data(),
                                      .pair_of_entry = pair_of_entry.data(),
                                      .expert_out = expert_rows,
                                      .top_k = k};
      // Reference: the combine buffer [returned rows][own partial rows], one weighted_row_sum, then
      // add_inplace.
      std::vector<float> buffer(widened);
      buffer.insert(buffer.end(), want.begin() + own_begin * width,
                    want.begin() + (own_begin + own_rows) * width);
      std::vector<int32_t> final_src;
      const int32_t returned_rows = send_rows - own_rows;
      for (int32_t row : token_rows) {
        const bool own = row >= own_send_begin && row < own_send_begin + own_rows;
        final_src.push_back(own ? returned_rows + (row - own_send_begin)
                                : (row < own_send_begin ? row : row - own_rows));
      }
      std::vector<int64_t> offsets64(token_offsets.begin(), token_offsets.end());
      std::vector<float> y(tokens * width), x_host(x);
      kernels::cpu::reference::weighted_row_sum(buffer.data(), width, final_src.data(), nullptr,
                                                offsets64.data(), tokens, y.data());
      kernels::cpu::reference::add_inplace(x_host.data(), y.data(), tokens * width);
      std::vector<float> x_row(x), x_column(x);
      for (int32_t t = 0; t < tokens; ++t) {
        layout::combine_residual_span<layout::kHostCombineBlock>(cs, token_offsets.data(),
                                                                 token_rows.data(), width, t, 0,
                                                                 width, x_row.data() + t * width);
        for (int64_t c = 0; c < width; ++c) {
          layout::combine_residual_span<1>(cs, token_offsets.data(), token_rows.data(), width, t, c,
                                           c + 1, x_column.data() + t * width);
        }
      }
      EXPECT_EQ(x_row, x_host);
      EXPECT_EQ(x_column, x_host);
      std::vector<float> x_backend(x);
      host_backend().combine_residual(cs, token_offsets.data(), token_rows.data(), width, tokens,
                                      x_backend.data());
      EXPECT_EQ(x_backend, x_host);
    }
  }
}

}  // namespace
}  // namespace moe
