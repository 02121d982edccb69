// One rank's dispatch messages (kernels/common/moe_wire.h) built from seeded data, packed and
// received by any backend (Backend::pack_rows / receive_rows, metadata copied into its memory),
// and what every received row must hold. The received arena is this rank's own packed messages
// read back as if slot d came from rank d (a loopback): so the expected rows are the rows it
// packed, and one process checks both sides, spill included.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/moe_layout.h"
#include "kernels/common/moe_wire.h"

namespace moe::test {

struct WireCase {
  int num_ranks = 0, rank = 0, top_k = 0;
  int64_t width = 0;
  int32_t tokens = 0;
  kernels::wire::MessageFormat f;
  std::vector<float> hidden;                     // [T, H]
  std::vector<int32_t> send_offsets{0};          // [N + 1]
  std::vector<int32_t> send_token;               // [S]
  std::vector<kernels::RouteEntry> send_routes;  // [S * k]
  std::vector<int32_t> header;                   // [N * W]: rows, pairs, max rows, 2 slots
  std::vector<int32_t> token_offsets{0};         // [T + 1] send rows of each token,
  std::vector<int32_t> token_rows;               // ascending
  // The pack writes the own rows into the own slot, and the receive reads them there (a shared
  // arena's way; needs rows read in place and the own rows within the capacity).
  bool own_in_slot = false;
  // The pack also gets the rows rounded to bf16 (PackView::hidden_bf16, as bf16 compute has them).
  bool bf16_copy = false;
  int64_t slots_bytes() const { return num_ranks * f.slot_bytes; }
};

// rows[d] rows for rank d (rows[rank] are the own rows), from `tokens` tokens of `width` values
// spread over +-8 (and a few tiny ones, for fp8's subnormals).
inline WireCase make_wire_case(uint32_t seed, int rank, const std::vector<int32_t>& rows,
                               int64_t width, int top_k, int32_t capacity, kernels::WireDtype dtype,
                               int32_t tokens = 7) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  WireCase c;
  c.num_ranks = static_cast<int>(rows.size());
  c.rank = rank;
  c.top_k = top_k;
  c.width = width;
  c.tokens = tokens;
  const int32_t W = kernels::layout::kHeaderSlots + 2;
  c.f = kernels::wire::message_format(dtype, width, top_k, W, capacity);
  c.hidden.resize(static_cast<size_t>(tokens * width));
  for (size_t i = 0; i < c.hidden.size(); ++i) {
    c.hidden[i] = (i % 13 == 5 ? 1e-4f : 2.0f) * n01(rng);
  }
  int32_t max_rows = 0;
  for (int d = 0; d < c.num_ranks; ++d) {
    c.send_offsets.push_back(c.send_offsets.back() + rows[d]);
    if (d != rank) max_rows = std::max(max_rows, rows[d]);
    for (int32_t j = 0; j < rows[d]; ++j) {
      c.send_token.push_back(static_cast<int32_t>(rng() % tokens));
      for (int e = 0; e < top_k; ++e) {
        c.send_routes.push_back(rng() % 2
                                    ? kernels::RouteEntry{static_cast<int32_t>(rng() % 2), n01(rng)}
                                    : kernels::RouteEntry{});
      }
    }
  }
  for (int d = 0; d < c.num_ranks; ++d) {
    c.header.insert(c.header.end(), {rows[d], 2 * rows[d], max_rows, rows[d], rows[d]});
  }
  for (int32_t t = 0; t < tokens; ++t) {
    for (size_t i = 0; i < c.send_token.size(); ++i) {
      if (c.send_token[i] == t) c.token_rows.push_back(static_cast<int32_t>(i));
    }
    c.token_offsets.push_back(static_cast<int32_t>(c.token_rows.size()));
  }
  return c;
}

// The case's rows rounded to bf16 in be's memory when it has bf16_copy (else an empty buffer).
inline kernels::Buffer<uint16_t> bf16_copy_on(kernels::Backend& be, const WireCase& c) {
  kernels::Buffer<uint16_t> out;
  if (!c.bf16_copy) return out;
  std::vector<uint16_t> rounded(c.hidden.size());
  for (size_t i = 0; i < rounded.size(); ++i) rounded[i] = float_to_bf16(c.hidden[i]).bits;
  out.assign(be, rounded.data(), rounded.size());
  return out;
}

// What pack_rows wrote: the slots, then the spill area (zeroed before the op).
inline std::vector<unsigned char> pack_on(kernels::Backend& be, const WireCase& c) {
  const int64_t spill_bytes = static_cast<int64_t>(c.send_token.size()) *
                                  (c.f.row_bytes + kernels::wire::route_bytes(c.f)) +
                              c.num_ranks * c.f.row_bytes;
  std::vector<unsigned char> out(static_cast<size_t>(c.slots_bytes() + spill_bytes), 0);
  kernels::Buffer<unsigned char> arena;
  arena.assign(be, out.data(), out.size());
  kernels::Buffer<float> hidden;
  hidden.assign(be, c.hidden.data(), c.hidden.size());
  const kernels::Buffer<uint16_t> hidden_bf16 = bf16_copy_on(be, c);
  kernels::Buffer<int32_t> offsets, tokens, header, token_offsets, token_rows;
  offsets.assign(be, c.send_offsets.data(), c.send_offsets.size());
  tokens.assign(be, c.send_token.data(), c.send_token.size());
  header.assign(be, c.header.data(), c.header.size());
  token_offsets.assign(be, c.token_offsets.data(), c.token_offsets.size());
  token_rows.assign(be, c.token_rows.data(), c.token_rows.size());
  kernels::Buffer<kernels::RouteEntry> routes;
  routes.assign(be, c.send_routes.data(), c.send_routes.size());
  kernels::wire::PackView v;
  v.f = c.f;
  v.num_ranks = c.num_ranks;
  v.rank = c.rank;
  v.hidden = hidden.data();
  v.hidden_bf16 = c.bf16_copy ? hidden_bf16.data() : nullptr;
  v.send_token = tokens.data();
  v.send_routes = routes.data();
  v.send_offsets = offsets.data();
  v.header = header.data();
  v.max_rows = static_cast<int32_t>(c.send_token.size()) + 3;  // a bound, as a device knows it
  v.slots = arena.data();
  v.spill = arena.data() + c.slots_bytes();
  v.own_in_slot = c.own_in_slot;
  v.num_tokens = c.tokens;
  v.token_offsets = token_offsets.data();
  v.token_rows = token_rows.data();
  be.pack_rows(v);
  be.download(out.data(), arena.data(), out.size());
  return out;
}

// The received side of a loopback: rows [R, H] in received order, as the experts read them
// (rows at row_at; bf16 rows read in place widened), and the received route entries.
struct Received {
  std::vector<float> rows;
  std::vector<kernels::RouteEntry> routes;
  std::vector<int32_t> row_at;
};

inline Received receive_on(kernels::Backend& be, const WireCase& c,
                           const std::vector<unsigned char>& packed) {
  const int N = c.num_ranks;
  const int32_t R = c.send_offsets[N];
  // The arena as the dispatcher lays it out: slots, a header-sized gap, the spills, own rows (or
  // in their slot: own_in_slot).
  int64_t spill_rows = 0;
  for (int s = 0; s < N; ++s) {
    if (s != c.rank) spill_rows += kernels::wire::spill_rows(c.f, c.header[s * c.f.header_ints]);
  }
  const int64_t arena_rows = N * kernels::wire::slot_rows(c.f) + spill_rows + R;
  std::vector<unsigned char> arena(
      static_cast<size_t>(c.f.header_bytes + arena_rows * c.f.row_bytes), 0);
  std::copy(packed.begin(), packed.begin() + c.slots_bytes(), arena.begin());
  std::copy(packed.begin() + c.slots_bytes(),
            packed.begin() + c.slots_bytes() + spill_rows * c.f.row_bytes,
            arena.begin() + c.slots_bytes() + c.f.header_bytes);
  kernels::Buffer<unsigned char> d_arena;
  d_arena.assign(be, arena.data(), arena.size());
  kernels::Buffer<float> hidden, rows;
  hidden.assign(be, c.hidden.data(), c.hidden.size());
  const bool in_place = kernels::wire::rows_in_place(c.f);
  if (!in_place) rows.ensure(be, static_cast<size_t>(std::max<int64_t>(R, 1) * c.width));
  kernels::Buffer<int32_t> offsets, tokens, header, plan, row_at;
  offsets.assign(be, c.send_offsets.data(), c.send_offsets.size());
  tokens.assign(be, c.send_token.data(), c.send_token.size());
  header.assign(be, c.header.data(), c.header.size());
  plan.ensure(be, static_cast<size_t>(2 * N + 2));
  row_at.ensure(be, static_cast<size_t>(std::max(R, 1)));
  kernels::Buffer<kernels::RouteEntry> send_routes, routes;
  send_routes.assign(be, c.send_routes.data(), c.send_routes.size());
  routes.ensure(be, static_cast<size_t>(std::max(R * c.top_k, 1)));
  kernels::wire::ReceiveView v;
  v.f = c.f;
  v.num_ranks = N;
  v.rank = c.rank;
  v.arena = d_arena.data();
  v.slot_stride = c.f.slot_bytes;
  v.spill = d_arena.data() + c.f.header_bytes;
  v.spill_first_row = N * kernels::wire::slot_rows(c.f);
  v.in_place = in_place;
  v.own_in_slot = v.own_packed = c.own_in_slot;
  v.recv_header = header.data();
  v.plan = plan.data();
  v.hidden = hidden.data();
  const kernels::Buffer<uint16_t> hidden_bf16 = bf16_copy_on(be, c);
  v.hidden_bf16 = c.bf16_copy ? hidden_bf16.data() : nullptr;
  v.send_token = tokens.data();
  v.send_routes = send_routes.data();
  v.send_offsets = offsets.data();
  v.rows =
      in_place ? d_arena.data() + c.f.header_bytes : reinterpret_cast<unsigned char*>(rows.data());
  v.routes = routes.data();
  v.row_at = row_at.data();
  v.max_rows = R;
  be.receive_rows(v);
  Received out;
  out.routes.resize(static_cast<size_t>(R * c.top_k));
  out.row_at.resize(static_cast<size_t>(R));
  if (R > 0) {
    be.download(out.routes.data(), routes.data(), out.routes.size() * sizeof(kernels::RouteEntry));
    be.download(out.row_at.data(), row_at.data(), out.row_at.size() * sizeof(int32_t));
  }
  out.rows.resize(static_cast<size_t>(R * c.width));
  const bool bf16_rows = kernels::wire::rows_dtype(v) == kernels::WireDtype::kBF16;
  std::vector<bf16> bits(static_cast<size_t>(c.width));
  for (int32_t r = 0; r < R; ++r) {
    const unsigned char* row = kernels::wire::input_row(v, out.row_at[r]);
    if (!bf16_rows) {
      be.download(out.rows.data() + r * c.width, row, static_cast<size_t>(c.width) * sizeof(float));
      continue;
    }
    be.download(bits.data(), row, bits.size() * sizeof(bf16));
    for (int64_t col = 0; col < c.width; ++col)
      out.rows[r * c.width + col] = bf16_to_float(bits[col]);
  }
  return out;
}

}  // namespace moe::test
