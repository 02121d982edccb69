// Rows on the wire of the expert-parallel exchange: the element type they travel in (fp32, bf16,
// or e4m3 with one fp32 scale per kFp8Block elements), the layout of the one message a rank sends
// each peer per direction, and the per-thread bodies that pack hidden rows into messages and read
// them back (CUDA kernels run them one thread per item, host backends in loops; the encodings are
// kernels/common/fp8.h's and bf16's round to nearest even).
//
// Dispatch message from rank r to rank d (n rows, C = capacity rows, m = min(n, C), W header ints):
//
//   slot d of the send arena (slot_bytes; the first message_bytes(m) of it are sent)
//   | header [W int32, padded to header_bytes] | m rows [row_bytes each] | m x k RouteEntry |
//   spill to d, only when n > C (a second exchange, whose size both sides know from the header)
//   | n - C rows | (n - C) x k RouteEntry | padding to whole rows |
//
// Receive arena: the N slots back to back, then the spill from every source in source order,
// then (rows read in place) this rank's own rows. With `base` = arena + header_bytes, every row
// lies at base + a * row_bytes for an integer "arena row" a (slot_bytes is a multiple of
// row_bytes), so fp32 rows and bf16 rows of even width (row_bytes = 2 * width: whole rows of
// `width` bf16 at stride width) are the experts' input where they landed, own rows written there
// in the wire type; fp8 rows (and bf16 rows of odd width) are widened to fp32 first.
// A shared arena (parallel/communicator.h) is read in place instead: the slot source s filled for
// this rank lies in s's segment, one segment (a multiple of row_bytes) after the other, so the
// same arena-row arithmetic holds with slot_stride = the segment size; own rows are written into
// this rank's own slot (by the pack, with the peers' rows, when it knows they fit); the spill (a
// separate exchange) lies apart, from row 0 of its own buffer, and a rank that received one widens
// every row (in_place off). In bf16 dispatch the experts read every row as a bf16 value, own rows
// included (rounded where they are written, in place or widened: the experts' input rounding,
// kernels/common/rounding.h, would round them the same).
#pragma once

#include <cstdint>

#include "kernels/common/fp8.h"
#include "kernels/common/host_device.h"
#include "kernels/cuda/device_math.h"
#include "kernels/op_args.h"

namespace moe::kernels {

// Element type of exchanged rows. fp8 = e4m3 with one fp32 scale per kFp8Block elements of a row.
enum class WireDtype : int32_t { kF32 = 0, kBF16 = 1, kFP8 = 2 };

constexpr const char* wire_dtype_name(WireDtype t) {
  return t == WireDtype::kF32 ? "fp32" : t == WireDtype::kBF16 ? "bf16" : "fp8";
}

namespace wire {

MOE_HD int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// Bytes of one row of `width` elements: fp8 rows carry their codes, then their scales. Always a
// multiple of 4, so that headers, route entries and fp8 scales placed after whole rows stay
// aligned (a bf16 row of odd width gets 2 bytes of padding).
MOE_HD int64_t row_bytes(WireDtype t, int64_t width) {
  if (t == WireDtype::kF32) return 4 * width;
  if (t == WireDtype::kBF16) return round_up(2 * width, 4);
  return round_up(width, 4) + 4 * ((width + kFp8Block - 1) / kFp8Block);
}

inline constexpr int64_t kHeaderAlignBytes = 64;

// The message layout of one exchange direction (see the drawing above), fixed per layer.
struct MessageFormat {
  WireDtype dtype = WireDtype::kF32;
  int64_t width = 0;        // H
  int32_t top_k = 0;        // k
  int32_t header_ints = 0;  // W
  int32_t capacity = 0;     // C rows per slot
  int64_t row_bytes = 0;
  int64_t header_bytes = 0;
  int64_t slot_bytes = 0;  // a multiple of row_bytes
};

MOE_HD int64_t route_bytes(const MessageFormat& f) {
  return static_cast<int64_t>(f.top_k) * static_cast<int64_t>(sizeof(RouteEntry));
}

MOE_HD MessageFormat message_format(WireDtype dtype, int64_t width, int32_t top_k,
                                    int32_t header_ints, int32_t capacity) {
  MessageFormat f;
  f.dtype = dtype;
  f.width = width;
  f.top_k = top_k;
  f.header_ints = header_ints;
  f.capacity = capacity;
  f.row_bytes = row_bytes(dtype, width);
  f.header_bytes = round_up(4 * static_cast<int64_t>(header_ints), kHeaderAlignBytes);
  f.slot_bytes =
      round_up(f.header_bytes + static_cast<int64_t>(capacity) * (f.row_bytes + route_bytes(f)),
               f.row_bytes);
  return f;
}

MOE_HD int64_t slot_rows(const MessageFormat& f) {
  return f.slot_bytes / f.row_bytes;
}

// Bytes of the round-1 message carrying m rows (header, rows, routes).
MOE_HD int64_t message_bytes(const MessageFormat& f, int64_t m) {
  return f.header_bytes + m * (f.row_bytes + route_bytes(f));
}

// Whole rows the spill of a peer with n rows takes (0 when n <= C).
MOE_HD int64_t spill_rows(const MessageFormat& f, int64_t n) {
  const int64_t m = n > f.capacity ? n - f.capacity : 0;
  return (m * (f.row_bytes + route_bytes(f)) + f.row_bytes - 1) / f.row_bytes;
}

// ---- Element encodings (one row of `width` elements at `row`).

// Columns [c0, c1) of src into a row of fp32 or bf16.
MOE_HD void encode_columns(WireDtype t, const float* src, unsigned char* row, int64_t c0,
                           int64_t c1) {
  if (t == WireDtype::kF32) {
    float* out = reinterpret_cast<float*>(row);
    for (int64_t c = c0; c < c1; ++c) out[c] = src[c];
  } else {
    uint16_t* out = reinterpret_cast<uint16_t*>(row);
    for (int64_t c = c0; c < c1; ++c) out[c] = cuda::f32_to_bf16_bits(src[c]);
  }
}

// Columns [c0, c1) of hidden row `at` (its first element's index) into a row of fp32 or bf16:
// bf16 from the rows' bf16 copy where the caller has one (the same bits as rounding), else
// encoded from the fp32 rows.
MOE_HD void hidden_columns(WireDtype t, const float* hidden, const uint16_t* hidden_bf16,
                           int64_t at, unsigned char* row, int64_t c0, int64_t c1) {
  if (t == WireDtype::kBF16 && hidden_bf16 != nullptr) {
    uint16_t* out = reinterpret_cast<uint16_t*>(row);
    for (int64_t c = c0; c < c1; ++c) out[c] = hidden_bf16[at + c];
    return;
  }
  encode_columns(t, hidden + at, row, c0, c1);
}

// Block b of an fp8 row: the block's scale (its largest magnitude maps to 448) and its codes.
MOE_HD void encode_fp8_block(const float* src, unsigned char* row, int64_t width, int64_t b) {
  const int64_t c0 = b * kFp8Block, c1 = c0 + kFp8Block < width ? c0 + kFp8Block : width;
  // The largest magnitude, NaN never winning (the scale stays finite): non-negative floats order
  // as their bits do, so an integer maximum (which vectorises) over the magnitudes' bits, NaNs
  // (bits above infinity's) masked to zero (a mask, not a select: GCC vectorises this one).
  uint32_t amax = 0;
  for (int64_t c = c0; c < c1; ++c) {
    const uint32_t a = float_bits(src[c]) & 0x7FFFFFFFu;
    const uint32_t counted = a & (0u - static_cast<uint32_t>(a <= 0x7F800000u));
    amax = counted > amax ? counted : amax;
  }
  const float scale = e4m3_block_scale(bits_float(amax));
  reinterpret_cast<float*>(row + round_up(width, 4))[b] = scale;
  for (int64_t c = c0; c < c1; ++c) row[c] = float_to_e4m3(src[c] / scale);
}

// The block scales of an fp8 row (after its codes, padded to 4 bytes).
MOE_HD const float* fp8_row_scales(const unsigned char* row, int64_t width) {
  return reinterpret_cast<const float*>(row + round_up(width, 4));
}

// Element c of a row, widened to fp32 (exact for fp32 and bf16).
MOE_HD float decode(WireDtype t, const unsigned char* row, int64_t width, int64_t c) {
  if (t == WireDtype::kF32) return reinterpret_cast<const float*>(row)[c];
  if (t == WireDtype::kBF16)
    return cuda::bf16_bits_to_f32(reinterpret_cast<const uint16_t*>(row)[c]);
  return e4m3_dequantise(row[c], fp8_row_scales(row, width)[c / kFp8Block]);
}

// ---- Dispatch, sending side: rows of the source layout into the messages.
struct PackView {
  MessageFormat f;
  int32_t num_ranks = 0, rank = 0;
  const float* hidden = nullptr;  // [T, H]
  // [T, H] the same rows rounded to bf16 (bf16 bits), where the caller has them (bf16 compute
  // keeps a bf16 copy of the experts' input): a bf16 wire row is then copied, not converted.
  const uint16_t* hidden_bf16 = nullptr;
  const int32_t* send_token = nullptr;      // [S] token of each send row (destination order)
  const RouteEntry* send_routes = nullptr;  // [S * k]
  const int32_t* send_offsets = nullptr;    // [N + 1] first send row of each destination
  const int32_t* header = nullptr;          // [N * W] the source layout's headers
  int32_t max_rows = 0;                     // items the row bodies run over (>= S)
  unsigned char* slots = nullptr;           // [N * slot_bytes]
  unsigned char* spill = nullptr;           // spill rows per destination, in destination order
  // Own rows too, in the wire type, into this rank's own slot (a shared arena read in place,
  // with the own rows within the capacity): the receive then leaves them (ReceiveView::own_packed).
  bool own_in_slot = false;
  // Send rows per token (the source layout's token_offsets [T + 1], token_rows), so that a host
  // can encode each token's row once and copy it to every destination.
  int32_t num_tokens = 0;
  const int32_t* token_offsets = nullptr;
  const int32_t* token_rows = nullptr;
};

// Where send row i goes: its row and route entries inside a message (null for i beyond the send
// rows and for own rows, whose row is in the own slot when own_in_slot and whose routes the
// receive takes from send_routes).
struct PackTarget {
  unsigned char* row = nullptr;
  RouteEntry* routes = nullptr;
};

MOE_HD PackTarget pack_target(const PackView& v, int32_t i) {
  PackTarget t;
  if (i >= v.send_offsets[v.num_ranks]) return t;
  int32_t d = 0;
  while (i >= v.send_offsets[d + 1]) ++d;
  const int64_t j = i - v.send_offsets[d];
  const int64_t n = v.send_offsets[d + 1] - v.send_offsets[d];
  const int64_t C = v.f.capacity;
  if (d == v.rank) {
    if (v.own_in_slot && j < C)
      t.row = v.slots + d * v.f.slot_bytes + v.f.header_bytes + j * v.f.row_bytes;
    return t;
  }
  if (j < C) {
    unsigned char* slot = v.slots + d * v.f.slot_bytes;
    const int64_t m = n < C ? n : C;
    t.row = slot + v.f.header_bytes + j * v.f.row_bytes;
    t.routes =
        reinterpret_cast<RouteEntry*>(slot + v.f.header_bytes + m * v.f.row_bytes) + j * v.f.top_k;
    return t;
  }
  int64_t base = 0;  // spill rows of the destinations before d
  for (int32_t e = 0; e < d; ++e) {
    if (e != v.rank) base += spill_rows(v.f, v.send_offsets[e + 1] - v.send_offsets[e]);
  }
  unsigned char* spill = v.spill + base * v.f.row_bytes;
  t.row = spill + (j - C) * v.f.row_bytes;
  t.routes = reinterpret_cast<RouteEntry*>(spill + (n - C) * v.f.row_bytes) + (j - C) * v.f.top_k;
  return t;
}

// Slot d's header: the layout's header for d.
MOE_HD void pack_header(const PackView& v, int32_t d) {
  int32_t* out = reinterpret_cast<int32_t*>(v.slots + d * v.f.slot_bytes);
  for (int32_t w = 0; w < v.f.header_ints; ++w) out[w] = v.header[d * v.f.header_ints + w];
}

// Send row i's route entries to t (its pack_target), if it has a place for them.
MOE_HD void pack_routes(const PackView& v, int32_t i, const PackTarget& t) {
  if (t.routes == nullptr) return;
  for (int32_t j = 0; j < v.f.top_k; ++j) {
    t.routes[j] = v.send_routes[static_cast<int64_t>(i) * v.f.top_k + j];
  }
}

MOE_HD void pack_routes(const PackView& v, int32_t i) {
  pack_routes(v, i, pack_target(v, i));
}

// Columns [c0, c1) of send row i (fp32 / bf16 wire).
MOE_HD void pack_columns(const PackView& v, int32_t i, int64_t c0, int64_t c1) {
  const PackTarget t = pack_target(v, i);
  if (t.row == nullptr) return;
  hidden_columns(v.f.dtype, v.hidden, v.hidden_bf16,
                 static_cast<int64_t>(v.send_token[i]) * v.f.width, t.row, c0, c1);
}

// Scaling block b of send row i (fp8 wire).
MOE_HD void pack_fp8_block(const PackView& v, int32_t i, int64_t b) {
  const PackTarget t = pack_target(v, i);
  if (t.row == nullptr) return;
  encode_fp8_block(v.hidden + static_cast<int64_t>(v.send_token[i]) * v.f.width, t.row, v.f.width,
                   b);
}

// ---- Dispatch, receiving side: the received messages as the experts' input rows and the
// received route entries in received order (source rank order; own rows at their place).
struct ReceiveView {
  MessageFormat f;
  int32_t num_ranks = 0, rank = 0;
  const unsigned char* arena = nullptr;  // slot of source s at arena + s * slot_stride
  int64_t slot_stride = 0;               // a multiple of row_bytes
  const unsigned char* spill = nullptr;  // arena row a of a spill at spill + a * row_bytes
  int64_t spill_first_row = 0;           // the first source's spill: N * slot_rows, or 0 when apart
  bool in_place = false;                 // the experts read the rows where they lie
  bool own_in_slot = false;              // in place: own rows in this rank's own slot
  bool own_packed = false;               // own_in_slot, and the pack wrote them there
  const int32_t* recv_header = nullptr;  // [N * W] received headers (own included)
  int32_t* plan = nullptr;               // [2N + 2] written by plan_receive
  const float* hidden = nullptr;         // [T, H] own rows come from here
  const uint16_t* hidden_bf16 = nullptr;    // [T, H] or null: as PackView::hidden_bf16
  const int32_t* send_token = nullptr;      // [S] (the source layout's)
  const RouteEntry* send_routes = nullptr;  // [S * k]
  const int32_t* send_offsets = nullptr;    // [N + 1]
  // The experts' input: arena + header_bytes (in place: rows in the wire type at row_bytes) or
  // [R, H] fp32 with the own block last (rows_dtype, rows_stride_bytes).
  unsigned char* rows = nullptr;
  RouteEntry* routes = nullptr;  // [R * k]
  int32_t* row_at = nullptr;     // [R] row of rows each received row lies at
  int32_t max_rows = 0;          // items the row bodies run over (>= R)
};

// Plan entries: recv_offsets [N + 1] (first received row per source), then spill_base [N] (first
// arena row of each source's spill), then the first row of the own block in `rows`.
MOE_HD const int32_t* recv_offsets(const ReceiveView& v) {
  return v.plan;
}
MOE_HD int32_t own_row_base(const ReceiveView& v) {
  return v.plan[2 * v.num_ranks + 1];
}

// True when the experts can read the rows where they landed: fp32 rows, and bf16 rows of even
// width (whole rows of width bf16 at row_bytes).
MOE_HD bool rows_in_place(const MessageFormat& f) {
  return f.dtype == WireDtype::kF32 || (f.dtype == WireDtype::kBF16 && f.row_bytes == 2 * f.width);
}

// Element type and row stride of `rows`: the wire's in place, else fp32.
MOE_HD WireDtype rows_dtype(const ReceiveView& v) {
  return v.in_place ? v.f.dtype : WireDtype::kF32;
}
MOE_HD int64_t rows_stride_bytes(const ReceiveView& v) {
  return v.in_place ? v.f.row_bytes : 4 * v.f.width;
}

MOE_HD void plan_receive(const ReceiveView& v) {
  const int32_t N = v.num_ranks, W = v.f.header_ints;
  int32_t* offsets = v.plan;
  int32_t* spill_base = v.plan + N + 1;
  offsets[0] = 0;
  int64_t spill = v.spill_first_row;
  for (int32_t s = 0; s < N; ++s) {
    const int32_t n = v.recv_header[s * W];
    offsets[s + 1] = offsets[s] + n;
    spill_base[s] = static_cast<int32_t>(spill);
    if (s != v.rank) spill += spill_rows(v.f, n);
  }
  const int32_t own = v.recv_header[v.rank * W];
  v.plan[2 * N + 1] = v.own_in_slot ? static_cast<int32_t>(v.rank * (v.slot_stride / v.f.row_bytes))
                      : v.in_place  ? static_cast<int32_t>(spill)
                                    : offsets[N] - own;
}

// Received row r: its source and its index within the source's rows.
struct ReceivedRow {
  int32_t source = 0, index = 0;
  bool valid = false;
};

MOE_HD ReceivedRow received_row(const ReceiveView& v, int32_t r) {
  const int32_t* offsets = recv_offsets(v);
  ReceivedRow x;
  if (r >= offsets[v.num_ranks]) return x;
  while (r >= offsets[x.source + 1]) ++x.source;
  x.index = r - offsets[x.source];
  x.valid = true;
  return x;
}

// Start of remote row (s, j) in the arena: in slot s or in s's spill.
MOE_HD const unsigned char* remote_row(const ReceiveView& v, int32_t s, int32_t j) {
  const int64_t C = v.f.capacity;
  if (j < C) return v.arena + s * v.slot_stride + v.f.header_bytes + j * v.f.row_bytes;
  return v.spill + (v.plan[v.num_ranks + 1 + s] + (j - C)) * v.f.row_bytes;
}

MOE_HD const RouteEntry* remote_routes(const ReceiveView& v, int32_t s, int32_t j) {
  const int64_t C = v.f.capacity;
  const int64_t n = v.recv_header[s * v.f.header_ints];
  if (j < C) {
    const int64_t m = n < C ? n : C;
    const unsigned char* rows = v.arena + s * v.slot_stride + v.f.header_bytes;
    return reinterpret_cast<const RouteEntry*>(rows + m * v.f.row_bytes) +
           static_cast<int64_t>(j) * v.f.top_k;
  }
  const unsigned char* spill = v.spill + v.plan[v.num_ranks + 1 + s] * v.f.row_bytes;
  return reinterpret_cast<const RouteEntry*>(spill + (n - C) * v.f.row_bytes) + (j - C) * v.f.top_k;
}

// Row of `rows` received row r lies at.
MOE_HD int32_t row_position(const ReceiveView& v, const ReceivedRow& x, int32_t r) {
  const int32_t* offsets = recv_offsets(v);
  if (x.source == v.rank) return own_row_base(v) + x.index;
  if (v.in_place) {
    const int64_t C = v.f.capacity;
    return static_cast<int32_t>(x.index < C ? x.source * (v.slot_stride / v.f.row_bytes) + x.index
                                            : v.plan[v.num_ranks + 1 + x.source] + x.index - C);
  }
  const int32_t own = offsets[v.rank + 1] - offsets[v.rank];
  return r < offsets[v.rank] ? r : r - own;
}

// Route entries and row position of received row r.
MOE_HD void receive_routes(const ReceiveView& v, int32_t r) {
  const ReceivedRow x = received_row(v, r);
  if (!x.valid) return;
  const int32_t k = v.f.top_k;
  const RouteEntry* src =
      x.source == v.rank
          ? v.send_routes + static_cast<int64_t>(v.send_offsets[v.rank] + x.index) * k
          : remote_routes(v, x.source, x.index);
  for (int32_t j = 0; j < k; ++j) v.routes[static_cast<int64_t>(r) * k + j] = src[j];
  v.row_at[r] = row_position(v, x, r);
}

// Start of the experts' input row at `position` (row_position) in `rows`.
MOE_HD unsigned char* input_row(const ReceiveView& v, int32_t position) {
  return v.rows + static_cast<int64_t>(position) * rows_stride_bytes(v);
}

// Columns [c0, c1) of received row r into `rows`: own rows gathered from hidden (in the rows'
// type; bf16 values in bf16 dispatch), remote rows widened from the wire (nothing to do for rows
// read in place).
MOE_HD void receive_columns(const ReceiveView& v, int32_t r, int64_t c0, int64_t c1) {
  const ReceivedRow x = received_row(v, r);
  if (!x.valid) return;
  const int64_t H = v.f.width;
  unsigned char* row = input_row(v, row_position(v, x, r));
  float* out = reinterpret_cast<float*>(row);
  if (x.source == v.rank) {
    if (v.own_packed) return;
    const int64_t at = static_cast<int64_t>(v.send_token[v.send_offsets[v.rank] + x.index]) * H;
    const float* src = v.hidden + at;
    if (v.in_place || v.f.dtype != WireDtype::kBF16) {
      hidden_columns(rows_dtype(v), v.hidden, v.hidden_bf16, at, row, c0, c1);
    } else {
      for (int64_t c = c0; c < c1; ++c)
        out[c] = cuda::bf16_bits_to_f32(cuda::f32_to_bf16_bits(src[c]));
    }
  } else if (v.in_place) {
    return;
  } else if (v.f.dtype == WireDtype::kBF16) {  // the type tested once per row: the loop vectorises
    const uint16_t* in = reinterpret_cast<const uint16_t*>(remote_row(v, x.source, x.index));
    for (int64_t c = c0; c < c1; ++c) out[c] = cuda::bf16_bits_to_f32(in[c]);
  } else {
    const unsigned char* wire_row = remote_row(v, x.source, x.index);
    for (int64_t c = c0; c < c1; ++c) out[c] = decode(v.f.dtype, wire_row, H, c);
  }
}

}  // namespace wire
}  // namespace moe::kernels
