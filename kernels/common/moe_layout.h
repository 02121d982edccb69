// Expert-parallel layout computed by parallel threads: the same result as the sequential
// specification parallel::build_dispatch_layout (source side) and parallel::group_by_slot
// (receiver side), as per-thread bodies that a CUDA kernel runs one thread per index and that
// emulate() runs in host loops (the host backends' layout ops). Every backend routes through them.
//
// Every ordered choice of the host layout ("the n-th pair for expert e", "rows by destination,
// then ascending token", "pairs by slot, then ascending row") is a stable counting sort. A thread
// cannot walk all earlier items, so items are cut into chunks: one thread per chunk counts its
// items per key, noting for each item how many equal keys came before it in the chunk; an
// exclusive scan of each key over the chunks (one thread per key); then each item's place is its
// key's base for its chunk plus that note. Launch order (each step reads only what earlier steps
// wrote; a step's threads write disjoint entries):
//
//   source side (T tokens, k = top_k, P = T k pairs, C = ceil(T / chunk) chunks)
//     1. count_experts   [C]  chunk_expert[c][e] = pairs of chunk c routed to expert e;
//                             pair_before[p] = pairs for p's expert earlier in its chunk
//     2. scan_experts    [E]  chunk_expert -> exclusive base over chunks; expert_total[e]; the
//                             pair counts of e's replica slots into the header
//     3. choose_slot     [P]  pair_dest, pair_slot (replica (n + rank) mod c, as ReplicaSplit)
//     4. token_dests     [T]  ascending distinct destinations of each token (the dedup)
//     5. count_dests     [C]  chunk_dest[c][d] = tokens of chunk c sending a row to d;
//                             chunk_rows[c] = rows of chunk c; per token, the rows of the earlier
//                             tokens of its chunk (all, and to each of its destinations)
//     6. scan_dests      [N]  chunk_dest -> exclusive base; header rows / pairs of d
//     7. scan_rows       [1]  chunk_rows -> exclusive base; send_offsets; token_offsets[T]
//     8. assign_rows     [T]  send_token, send_routes, token_offsets, token_rows
//   receiver side (R received rows, S local slots, C' = ceil(R / chunk) chunks)
//     1. count_slots     [C'] chunk_slot[c][s] = entries of chunk c naming slot s;
//                             entry_before[i] = entries for i's slot earlier in its chunk
//     2. scan_slots      [S]  chunk_slot -> exclusive base; slot totals into slot_begin[s + 1]
//     3. scan_slot_begin [1]  slot_begin prefix sums
//     4. assign_pairs    [R]  row_index, pair_of_entry
//
// Bad input (an expert id outside [0, E), as a router gives for non-finite logits, or a received
// local slot outside [0, S)) never indexes out of bounds: the pair is sent to replica 0 of expert
// 0 / dropped, and *error records 1 + the first bad index seen (the caller turns it into an error).
//
// The header a rank sends each destination d (width W = 3 + max_local_slots ints):
//   [rows sent to d, pairs sent to d, the most rows this rank sends any other rank,
//    pairs for d's local slot 0, 1, ..., zero beyond d's slots]
// It travels at the head of the rows' message (kernels/common/moe_wire.h): every receiver learns
// its row and per-slot pair counts, and every rank learns from all senders' third field whether
// any message outgrew the fixed capacity (then every rank joins one spill exchange).
#pragma once

#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/common/host_device.h"
#include "kernels/common/moe_wire.h"
#include "kernels/op_args.h"

namespace moe::kernels::layout {

// Items per chunk (tokens on the source side, received rows on the receiver side), set per
// backend in BackendTraits::layout_chunk: a GPU wants enough chunks to spread the counting over
// threads but not so many that the per-key scans grow long; a host loop wants few chunks (every
// chunk zeroes and scans a count per key). The result does not depend on it.
inline constexpr int32_t kDeviceLayoutChunk = 32;
inline constexpr int32_t kHostLayoutChunk = 64;

MOE_HD int32_t num_chunks(int32_t items, int32_t chunk) {
  return (items + chunk - 1) / chunk;
}

// One past the last item of chunk c of `chunk` items, of `items` in all.
MOE_HD int32_t chunk_end(int32_t c, int32_t chunk, int32_t items) {
  return c * chunk + chunk < items ? c * chunk + chunk : items;
}

// Column `col` of a [chunks, width] count matrix becomes its exclusive prefix sums over the
// chunks; returns the column's total.
MOE_HD int32_t scan_column(int32_t* counts, int32_t chunks, int32_t width, int32_t col) {
  int32_t base = 0;
  for (int32_t c = 0; c < chunks; ++c) {
    int32_t* count = counts + static_cast<int64_t>(c) * width + col;
    const int32_t n = *count;
    *count = base;
    base += n;
  }
  return base;
}

// Ints per header entry and the place of its fields (see above).
inline constexpr int32_t kHeaderRows = 0, kHeaderPairs = 1, kHeaderMaxRows = 2, kHeaderSlots = 3;
MOE_HD int32_t header_width(const RoutingTable& t) {
  return kHeaderSlots + t.max_local_slots;
}

// Source side of one layer. Inputs first, then scratch, then outputs; all in one memory space
// (device memory for the CUDA kernels, host memory for the emulation). Sizes: E experts, N ranks,
// T tokens, C chunks, S_max = T * min(k, N) rows at most.
struct SourceLayoutView {
  const int32_t* ids = nullptr;    // [T * k] top-k expert ids
  const float* weights = nullptr;  // [T * k] router weights
  // Instead of ids / weights: route entries a node-first exchange forwarded to this node
  // ([T * k]; local_slot holds the expert id, weight the router weight). An entry with a negative
  // id belongs to another node and routes nowhere (no error, no row, no pair).
  const RouteEntry* forwarded = nullptr;
  int32_t num_tokens = 0;                   // T
  int32_t top_k = 0;                        // k
  int32_t chunk_size = kDeviceLayoutChunk;  // tokens per chunk
  RoutingTable table;                       //
  int32_t* chunk_expert = nullptr;          // [C * E]
  int32_t* pair_before = nullptr;           // [T * k] see count_experts
  int32_t* chunk_dest = nullptr;            // [C * N]
  int32_t* chunk_rows = nullptr;            // [C]
  int32_t* pair_dest = nullptr;             // [T * k]
  int32_t* pair_slot = nullptr;             // [T * k]
  int32_t* token_ndest = nullptr;           // [T]
  int32_t* token_dest = nullptr;            // [T * k] first token_ndest[t] entries of row t
  int32_t* token_rows_before = nullptr;     // [T] see count_dests
  int32_t* token_dest_before = nullptr;     // [T * k] see count_dests
  int32_t* expert_total = nullptr;          // [E] pairs per logical expert
  int32_t* header = nullptr;                // [N * W]
  int32_t* send_offsets = nullptr;          // [N + 1] first row for each destination
  int32_t* send_token = nullptr;            // [S_max] token of each sent row
  RouteEntry* send_routes = nullptr;        // [S_max * k]
  int32_t* token_offsets = nullptr;         // [T + 1] into token_rows
  int32_t* token_rows = nullptr;            // [S_max] rows of each token, destination order
  int32_t* error = nullptr;                 // [1] 0, or 1 + first bad pair
};

MOE_HD bool valid_expert(const SourceLayoutView& v, int32_t e) {
  return e >= 0 && e < v.table.num_experts;
}

// Pair p's expert id and router weight, from whichever input the view has.
MOE_HD int32_t pair_expert(const SourceLayoutView& v, int32_t p) {
  return v.forwarded != nullptr ? v.forwarded[p].local_slot : v.ids[p];
}
MOE_HD float pair_weight(const SourceLayoutView& v, int32_t p) {
  return v.forwarded != nullptr ? v.forwarded[p].weight : v.weights[p];
}
// A forwarded entry for another node: no destination here.
MOE_HD bool routes_nowhere(const SourceLayoutView& v, int32_t p) {
  return v.forwarded != nullptr && v.forwarded[p].local_slot < 0;
}

MOE_HD void note_error(int32_t* error, int32_t index) {
  if (*error == 0) *error = 1 + index;
}

MOE_HD void count_experts(const SourceLayoutView& v, int32_t chunk) {
  const int32_t E = v.table.num_experts, k = v.top_k;
  int32_t* counts = v.chunk_expert + static_cast<int64_t>(chunk) * E;
  for (int32_t e = 0; e < E; ++e) counts[e] = 0;
  const int32_t t_end = chunk_end(chunk, v.chunk_size, v.num_tokens);
  for (int32_t p = chunk * v.chunk_size * k; p < t_end * k; ++p) {
    const int32_t e = pair_expert(v, p);
    if (valid_expert(v, e)) {
      v.pair_before[p] = counts[e]++;
    } else if (!routes_nowhere(v, p)) {
      note_error(v.error, p);
    }
  }
}

// Pairs among the first n_total pairs for an expert with c replicas that go to replica index i,
// when the n-th pair goes to replica (n + rank) mod c.
MOE_HD int32_t replica_share(int32_t n_total, int32_t c, int32_t rank, int32_t i) {
  const int32_t m = ((i - rank) % c + c) % c;  // first n with (n + rank) mod c == i
  return n_total > m ? (n_total - 1 - m) / c + 1 : 0;
}

MOE_HD void scan_experts(const SourceLayoutView& v, int32_t e) {
  const int32_t base =
      scan_column(v.chunk_expert, num_chunks(v.num_tokens, v.chunk_size), v.table.num_experts, e);
  v.expert_total[e] = base;
  const int32_t W = header_width(v.table);
  const int32_t r0 = v.table.replica_begin[e], replicas = v.table.replica_begin[e + 1] - r0;
  for (int32_t i = 0; i < replicas; ++i) {
    const int32_t d = v.table.replica_rank[r0 + i], s = v.table.replica_slot[r0 + i];
    v.header[d * W + kHeaderSlots + s] = replica_share(base, replicas, v.table.rank, i);
  }
}

MOE_HD void choose_slot(const SourceLayoutView& v, int32_t p) {
  const int32_t k = v.top_k;
  if (routes_nowhere(v, p)) {
    v.pair_dest[p] = -1;
    v.pair_slot[p] = -1;
    return;
  }
  const int32_t e_raw = pair_expert(v, p);
  const int32_t e = valid_expert(v, e_raw) ? e_raw : 0;
  const int32_t r0 = v.table.replica_begin[e], replicas = v.table.replica_begin[e + 1] - r0;
  int32_t i = 0;
  if (replicas > 1 && valid_expert(v, e_raw)) {
    // n = pairs for e before p: those of earlier chunks plus earlier ones in p's chunk.
    const int32_t chunk = p / (v.chunk_size * k);
    const int32_t n =
        v.chunk_expert[static_cast<int64_t>(chunk) * v.table.num_experts + e] + v.pair_before[p];
    i = static_cast<int32_t>((static_cast<uint32_t>(n) + static_cast<uint32_t>(v.table.rank)) %
                             static_cast<uint32_t>(replicas));
  }
  v.pair_dest[p] = v.table.replica_rank[r0 + i];
  v.pair_slot[p] = v.table.replica_slot[r0 + i];
}

MOE_HD void token_dests(const SourceLayoutView& v, int32_t t) {
  const int32_t k = v.top_k;
  int32_t* out = v.token_dest + static_cast<int64_t>(t) * k;
  int32_t n = 0;
  for (int32_t j = 0; j < k; ++j) {  // insertion into a sorted list without duplicates
    const int32_t d = v.pair_dest[t * k + j];
    if (d < 0) continue;  // routes nowhere
    int32_t at = 0;
    while (at < n && out[at] < d) ++at;
    if (at < n && out[at] == d) continue;
    for (int32_t m = n; m > at; --m) out[m] = out[m - 1];
    out[at] = d;
    ++n;
  }
  v.token_ndest[t] = n;
}

MOE_HD void count_dests(const SourceLayoutView& v, int32_t chunk) {
  const int32_t N = v.table.num_ranks, k = v.top_k;
  int32_t* counts = v.chunk_dest + static_cast<int64_t>(chunk) * N;
  for (int32_t d = 0; d < N; ++d) counts[d] = 0;
  int32_t rows = 0;
  const int32_t t_end = chunk_end(chunk, v.chunk_size, v.num_tokens);
  for (int32_t t = chunk * v.chunk_size; t < t_end; ++t) {
    v.token_rows_before[t] = rows;
    for (int32_t i = 0; i < v.token_ndest[t]; ++i) {
      v.token_dest_before[t * k + i] = counts[v.token_dest[t * k + i]]++;
    }
    rows += v.token_ndest[t];
  }
  v.chunk_rows[chunk] = rows;
}

MOE_HD void scan_dests(const SourceLayoutView& v, int32_t d) {
  const int32_t base =
      scan_column(v.chunk_dest, num_chunks(v.num_tokens, v.chunk_size), v.table.num_ranks, d);
  const int32_t W = header_width(v.table);
  int32_t* h = v.header + d * W;
  h[kHeaderRows] = base;
  int32_t pairs = 0;
  const int32_t slots = v.table.rank_num_slots[d];
  for (int32_t s = 0; s < slots; ++s) pairs += h[kHeaderSlots + s];
  for (int32_t s = slots; s < v.table.max_local_slots; ++s) h[kHeaderSlots + s] = 0;
  h[kHeaderPairs] = pairs;
}

MOE_HD void scan_rows(const SourceLayoutView& v) {
  v.token_offsets[v.num_tokens] =
      scan_column(v.chunk_rows, num_chunks(v.num_tokens, v.chunk_size), 1, 0);
  const int32_t W = header_width(v.table);
  v.send_offsets[0] = 0;
  int32_t max_rows = 0;
  for (int32_t d = 0; d < v.table.num_ranks; ++d) {
    const int32_t rows = v.header[d * W + kHeaderRows];
    v.send_offsets[d + 1] = v.send_offsets[d] + rows;
    if (d != v.table.rank && rows > max_rows) max_rows = rows;
  }
  for (int32_t d = 0; d < v.table.num_ranks; ++d) v.header[d * W + kHeaderMaxRows] = max_rows;
}

MOE_HD void assign_rows(const SourceLayoutView& v, int32_t t) {
  const int32_t k = v.top_k, N = v.table.num_ranks;
  const int32_t chunk = t / v.chunk_size;
  const int32_t offset = v.chunk_rows[chunk] + v.token_rows_before[t];
  v.token_offsets[t] = offset;
  for (int32_t i = 0; i < v.token_ndest[t]; ++i) {
    const int32_t d = v.token_dest[t * k + i];
    // Tokens before t that send a row to d: in earlier chunks, then earlier in t's chunk.
    const int32_t before =
        v.chunk_dest[static_cast<int64_t>(chunk) * N + d] + v.token_dest_before[t * k + i];
    const int32_t row = v.send_offsets[d] + before;
    v.send_token[row] = t;
    v.token_rows[offset + i] = row;
    RouteEntry* routes = v.send_routes + static_cast<int64_t>(row) * k;
    for (int32_t j = 0; j < k; ++j) {
      const int32_t p = t * k + j;
      routes[j] =
          v.pair_dest[p] == d ? RouteEntry{v.pair_slot[p], pair_weight(v, p)} : RouteEntry{};
    }
  }
}

// Receiver side: received rows' route entries grouped by local slot.
struct SlotGroupingView {
  const RouteEntry* routes = nullptr;  // [R * k] in received (source-rank) order
  int32_t num_rows = 0;                // R
  int32_t top_k = 0;
  int32_t chunk_size = kDeviceLayoutChunk;  // received rows per chunk
  int32_t num_slots = 0;                    // S
  // [R] where each received row lies in the experts' input (kernels/common/moe_wire.h); nullptr:
  // received row r is row r. row_index holds these places.
  const int32_t* row_at = nullptr;
  int32_t* chunk_slot = nullptr;     // [C' * S]
  int32_t* entry_before = nullptr;   // [R * k] see count_slots
  int32_t* slot_begin = nullptr;     // [S + 1]
  int32_t* row_index = nullptr;      // [R * k] memory row of each pair (first slot_begin[S])
  int32_t* pair_of_entry = nullptr;  // [R * k] pair of each entry, -1 if unused
  int32_t* error = nullptr;          // [1] 0, or 1 + first bad entry
};

MOE_HD bool valid_slot(const SlotGroupingView& v, int32_t s) {
  return s >= 0 && s < v.num_slots;
}

MOE_HD void count_slots(const SlotGroupingView& v, int32_t chunk) {
  const int32_t S = v.num_slots, k = v.top_k;
  int32_t* counts = v.chunk_slot + static_cast<int64_t>(chunk) * S;
  for (int32_t s = 0; s < S; ++s) counts[s] = 0;
  const int32_t r_end = chunk_end(chunk, v.chunk_size, v.num_rows);
  for (int32_t i = chunk * v.chunk_size * k; i < r_end * k; ++i) {
    const int32_t s = v.routes[i].local_slot;
    if (valid_slot(v, s)) {
      v.entry_before[i] = counts[s]++;
    } else if (s >= 0) {
      note_error(v.error, i);
    }
  }
}

MOE_HD void scan_slots(const SlotGroupingView& v, int32_t s) {
  v.slot_begin[s + 1] =
      scan_column(v.chunk_slot, num_chunks(v.num_rows, v.chunk_size), v.num_slots, s);
}

MOE_HD void scan_slot_begin(const SlotGroupingView& v) {
  v.slot_begin[0] = 0;
  for (int32_t s = 0; s < v.num_slots; ++s) v.slot_begin[s + 1] += v.slot_begin[s];
}

MOE_HD void assign_pairs(const SlotGroupingView& v, int32_t r) {
  const int32_t k = v.top_k;
  const int32_t chunk = r / v.chunk_size;
  for (int32_t j = 0; j < k; ++j) {
    const int32_t i = r * k + j;
    const int32_t s = v.routes[i].local_slot;
    if (!valid_slot(v, s)) {
      v.pair_of_entry[i] = -1;
      continue;
    }
    const int32_t p = v.slot_begin[s] +
                      v.chunk_slot[static_cast<int64_t>(chunk) * v.num_slots + s] +
                      v.entry_before[i];
    v.row_index[p] = v.row_at != nullptr ? v.row_at[r] : r;
    v.pair_of_entry[i] = p;
  }
}

// Combine, over the columns [c_begin, c_end) of one row per call, in blocks of B columns whose
// sums stay in registers (a CUDA thread takes one column with B = 1; host loops take whole rows
// with B = kHostCombineBlock). fp32 in a fixed order with the first term stored (0 + a == a), so
// every split of the columns gives the same bits.
inline constexpr int kHostCombineBlock = 16;

// Stores N fp32 values from column c0 of a row of wire type t (fp32 or bf16).
template <int N>
MOE_HD void store_block(WireDtype t, unsigned char* row, int64_t c0, const float* v) {
  if (t == WireDtype::kF32) {
    float* out = reinterpret_cast<float*>(row) + c0;
    for (int i = 0; i < N; ++i) out[i] = v[i];
  } else {
    uint16_t* out = reinterpret_cast<uint16_t*>(row) + c0;
    for (int i = 0; i < N; ++i) out[i] = cuda::f32_to_bf16_bits(v[i]);
  }
}

// Loads N values from column c0 of a row of wire type t (fp32 or bf16), widened exactly.
template <int N>
MOE_HD void load_block(WireDtype t, const unsigned char* row, int64_t c0, float* v) {
  if (t == WireDtype::kF32) {
    const float* in = reinterpret_cast<const float*>(row) + c0;
    for (int i = 0; i < N; ++i) v[i] = in[i];
  } else {
    const uint16_t* in = reinterpret_cast<const uint16_t*>(row) + c0;
    for (int i = 0; i < N; ++i) v[i] = cuda::bf16_bits_to_f32(in[i]);
  }
}

// The experts' output rows [P, width] as the combine reads them: fp32, or bf16 (the compute
// dtype's: the bf16 experts round their output, so these are the values an fp32 row would hold)
// at a stride of width bf16 values. Converts from either pointer, so a caller passes its buffer.
struct ExpertRows {
  const unsigned char* data = nullptr;
  WireDtype dtype = WireDtype::kF32;  // kF32 or kBF16

  ExpertRows() = default;
  MOE_HD ExpertRows(const float* rows)  // NOLINT(google-explicit-constructor)
      : data(reinterpret_cast<const unsigned char*>(rows)), dtype(WireDtype::kF32) {}
  MOE_HD ExpertRows(const bf16* rows)  // NOLINT(google-explicit-constructor)
      : data(reinterpret_cast<const unsigned char*>(rows)), dtype(WireDtype::kBF16) {}
  MOE_HD int64_t row_bytes(int64_t width) const {
    return (dtype == WireDtype::kF32 ? 4 : 2) * width;
  }
  MOE_HD const unsigned char* row(int32_t p, int64_t width) const {
    return data + p * row_bytes(width);
  }
};

// acc[i] = sum over j (ascending) of routes[r k + j].weight * expert_out[pair][c0 + i], over the
// entries of received row r that this rank computed (0 when it computed none), for the N columns
// from c0 (N a constant, so the sums stay in registers). bf16 outputs are widened exactly.
template <int N>
MOE_HD void partial_block(const RouteEntry* routes, const int32_t* pair_of_entry,
                          ExpertRows expert_out, int64_t width, int32_t top_k, int32_t r,
                          int64_t c0, float* acc) {
  for (int i = 0; i < N; ++i) acc[i] = 0.0f;
  bool first = true;
  float src[N];
  for (int32_t j = 0; j < top_k; ++j) {
    const int32_t p = pair_of_entry[r * top_k + j];
    if (p < 0) continue;
    const float w = routes[r * top_k + j].weight;
    load_block<N>(expert_out.dtype, expert_out.row(p, width), c0, src);
    if (first) {
      for (int i = 0; i < N; ++i) acc[i] = w * src[i];
    } else {
      for (int i = 0; i < N; ++i) acc[i] = acc[i] + w * src[i];
    }
    first = false;
  }
}

// The partial rows a rank sends back: one per received row of another rank (the own block
// [own_begin, own_begin + own_rows) is left out: combine_residual sums it in place), in received
// order, in the combine's wire type (fp32 or bf16).
struct PartialRowsView {
  const RouteEntry* routes = nullptr;      // [R * k] received order
  const int32_t* pair_of_entry = nullptr;  // [R * k]
  ExpertRows expert_out;                   // [P, width]
  int64_t width = 0;
  int32_t top_k = 0;
  int32_t num_rows = 0;  // R
  int32_t own_begin = 0, own_rows = 0;
  WireDtype dtype = WireDtype::kF32;
  unsigned char* out = nullptr;  // [R - own_rows] rows of wire::row_bytes(dtype, width)
};

// Columns [c_begin, c_end) of outgoing partial row q (received row q, or q + own_rows past the
// own block): blocks of B, then single columns.
template <int B>
MOE_HD void partial_row_span(const PartialRowsView& v, int32_t q, int64_t c_begin, int64_t c_end) {
  const int32_t r = q < v.own_begin ? q : q + v.own_rows;
  unsigned char* row = v.out + q * wire::row_bytes(v.dtype, v.width);
  float acc[B];
  int64_t c0 = c_begin;
  for (; c0 + B <= c_end; c0 += B) {
    partial_block<B>(v.routes, v.pair_of_entry, v.expert_out, v.width, v.top_k, r, c0, acc);
    store_block<B>(v.dtype, row, c0, acc);
  }
  for (; c0 < c_end; ++c0) {
    partial_block<1>(v.routes, v.pair_of_entry, v.expert_out, v.width, v.top_k, r, c0, acc);
    store_block<1>(v.dtype, row, c0, acc);
  }
}

// Where the combined rows of a token come from (memory orders of parallel/dispatcher.h): rows
// sent to other ranks come back into `returned`, packed by destination without this rank's own
// block, in the combine's wire type; rows this rank kept are summed here from the expert outputs
// (their partial sums are never stored).
struct CombineSources {
  const unsigned char* returned = nullptr;  // [S - own_rows] rows of wire::row_bytes(dtype, width)
  // Byte offset of returned row q from `returned` ([S - own_rows]: rows read in place from a
  // shared arena, apart per peer); nullptr: q * row_bytes.
  const int64_t* returned_at = nullptr;
  WireDtype dtype = WireDtype::kF32;  // fp32 or bf16
  int32_t own_send_begin = 0;         // first own row in send order
  int32_t own_rows = 0;
  int32_t own_recv_begin = 0;              // first own row in received order
  const RouteEntry* routes = nullptr;      // [R * k] received order
  const int32_t* pair_of_entry = nullptr;  // [R * k]
  ExpertRows expert_out;                   // [P, width]
  int32_t top_k = 0;
};

MOE_HD const unsigned char* returned_row(const CombineSources& src, int32_t q, int64_t row_bytes) {
  return src.returned + (src.returned_at != nullptr ? src.returned_at[q] : q * row_bytes);
}

// x_row[c] += (sum of token t's rows in destination order) for the N columns from c0: the
// combine and the residual add at once. The sum is finished in fp32 before the add, so the result
// equals y = combine; x += y.
template <int N>
MOE_HD void combine_residual_block(const CombineSources& src, const int32_t* token_offsets,
                                   const int32_t* token_rows, int64_t width, int32_t t, int64_t c0,
                                   float* x_row) {
  const int32_t begin = token_offsets[t], end = token_offsets[t + 1];
  const int64_t row_bytes = wire::row_bytes(src.dtype, width);
  float acc[N], v[N];
  for (int i = 0; i < N; ++i) acc[i] = 0.0f;
  for (int32_t k = begin; k < end; ++k) {
    const int32_t row = token_rows[k];
    const int32_t own = row - src.own_send_begin;
    if (own >= 0 && own < src.own_rows) {
      partial_block<N>(src.routes, src.pair_of_entry, src.expert_out, width, src.top_k,
                       src.own_recv_begin + own, c0, v);
    } else {
      const int32_t q = row < src.own_send_begin ? row : row - src.own_rows;
      load_block<N>(src.dtype, returned_row(src, q, row_bytes), c0, v);
    }
    if (k == begin) {
      for (int i = 0; i < N; ++i) acc[i] = v[i];
    } else {
      for (int i = 0; i < N; ++i) acc[i] = acc[i] + v[i];
    }
  }
  for (int i = 0; i < N; ++i) x_row[c0 + i] = x_row[c0 + i] + acc[i];
}

// combine_residual_block over the columns [c_begin, c_end): blocks of B, then single columns.
template <int B>
MOE_HD void combine_residual_span(const CombineSources& src, const int32_t* token_offsets,
                                  const int32_t* token_rows, int64_t width, int32_t t,
                                  int64_t c_begin, int64_t c_end, float* x_row) {
  int64_t c0 = c_begin;
  for (; c0 + B <= c_end; c0 += B) {
    combine_residual_block<B>(src, token_offsets, token_rows, width, t, c0, x_row);
  }
  for (; c0 < c_end; ++c0) {
    combine_residual_block<1>(src, token_offsets, token_rows, width, t, c0, x_row);
  }
}

// Host loops over the bodies in launch order: the host backends' layout ops, which the tests
// compare field by field with the sequential specification (parallel/dispatch_layout.h).
inline void emulate(const SourceLayoutView& view) {
  const SourceLayoutView v = view;  // a local copy: stores through its arrays cannot alias it
  const int32_t C = num_chunks(v.num_tokens, v.chunk_size);
  const int32_t P = v.num_tokens * v.top_k;
  *v.error = 0;
  for (int32_t c = 0; c < C; ++c) count_experts(v, c);
  for (int32_t e = 0; e < v.table.num_experts; ++e) scan_experts(v, e);
  for (int32_t p = 0; p < P; ++p) choose_slot(v, p);
  for (int32_t t = 0; t < v.num_tokens; ++t) token_dests(v, t);
  for (int32_t c = 0; c < C; ++c) count_dests(v, c);
  for (int32_t d = 0; d < v.table.num_ranks; ++d) scan_dests(v, d);
  scan_rows(v);
  for (int32_t t = 0; t < v.num_tokens; ++t) assign_rows(v, t);
}

inline void emulate(const SlotGroupingView& view) {
  const SlotGroupingView v = view;
  const int32_t C = num_chunks(v.num_rows, v.chunk_size);
  *v.error = 0;
  for (int32_t c = 0; c < C; ++c) count_slots(v, c);
  for (int32_t s = 0; s < v.num_slots; ++s) scan_slots(v, s);
  scan_slot_begin(v);
  for (int32_t r = 0; r < v.num_rows; ++r) assign_pairs(v, r);
}

}  // namespace moe::kernels::layout
