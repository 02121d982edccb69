// Index math and per-row arithmetic of the tensor-core prefill attention and of the graph-safe
// fixed-grid (graph-safe) decode attention in attention_tc.cu, as __host__ __device__ bodies so
// that tests/gpu_host emulates the kernels with exactly these functions. No fmt, no host-only
// headers: nvcc compiles this file.
//
// Tensor-core prefill (one CTA = one AttentionTcItem): the rows of a sequence's query block for
// one kv head are flattened as i = token * G + head_in_group (G = query heads per kv head), so a
// 64-row tile holds 64 / G tokens times all G heads and reads each K/V tile once for the whole
// group. Row i is query head kv_head * G + i % G of new token i / G, at absolute position
// past_len + i / G; it sees cache positions key <= past_len + i / G (causal by absolute position).
//
// Fixed-grid decode: seqs live in device memory and the host knows only num_seqs and num_rows, so
// every launch grid depends on (num_rows, heads, max_len) alone. A block of new row r finds its
// sequence on the device and exits early past the sequence's length.
#pragma once

#include <cstdint>

#include "kernels/cuda/attention_math.h"
#include "kernels/cuda/device_math.h"
#include "kernels/op_args.h"

namespace moe::kernels::cuda {

// ---- tensor-core prefill geometry ----
inline constexpr int kTcHeadDim = 128;  // the only head_dim the tensor-core kernel is built for
inline constexpr int kTcWarps = 4;
inline constexpr int kTcWarpRows = 16;                       // mma m: query rows per warp
inline constexpr int kTcBlockRows = kTcWarps * kTcWarpRows;  // flattened query rows per CTA
inline constexpr int kTcKeyTile = 64;                        // keys per shared-memory tile
inline constexpr int kTcSmemPad = 8;  // bf16 of padding per shared row (16 B: rows stay aligned)
// A sequence with at least this many new tokens runs on the tensor-core kernel; fewer (decode,
// short chunks) stay on the split-K CUDA-core kernel of attention.cu. Reason: the tensor-core
// path rounds q and P to bf16 and only pays off when the Q x K work is large (a prompt); the
// CUDA-core kernel keeps fp32 q and P and splits long caches across blocks for decode-like rows.
inline constexpr int64_t kAttnTcMinNewTokens = 64;

// One CTA of the tensor-core prefill. Plain int32 (32 bytes), uploaded as is; the plan checks
// every value fits.
struct AttentionTcItem {
  int32_t row_begin = 0;   // q/out row of the sequence's first new token
  int32_t past_len = 0;    // position of the sequence's first new token
  int32_t num_new = 0;     // new tokens of the sequence
  int32_t cache_row0 = 0;  // cache row of position 0 of the sequence: slot * max_len
  int32_t kv_head = 0;
  int32_t tile_row0 = 0;  // first flattened row (token * G + head_in_group) of this CTA
  int32_t key_end = 0;    // the CTA reads keys [0, key_end): last token's position + 1
  int32_t reserved = 0;
};
static_assert(sizeof(AttentionTcItem) == 32);

// Query row r (0 <= r < kTcBlockRows) of a tensor-core CTA.
struct TcRow {
  bool valid = false;  // false past the sequence's last (token, head) row: computes nothing
  int32_t token = 0;   // new-token index within the sequence
  int32_t head = 0;    // query head
  int32_t pos = 0;     // absolute position past_len + token
};

MOE_HD TcRow tc_row(const AttentionTcItem& it, int r, int G) {
  TcRow row;
  const int i = it.tile_row0 + r;
  row.valid = r >= 0 && r < kTcBlockRows && i < it.num_new * G;
  row.token = i / G;
  row.head = it.kv_head * G + (i - row.token * G);
  row.pos = it.past_len + row.token;
  return row;
}

// Keys a CTA starting at flattened row tile_row0 must read: up to its last token's position.
MOE_HD int32_t tc_key_end(int32_t past_len, int32_t num_new, int32_t tile_row0, int G) {
  int32_t last_row = tile_row0 + kTcBlockRows - 1;
  if (last_row > num_new * G - 1) last_row = num_new * G - 1;
  return past_len + last_row / G + 1;
}

// ---- the tensor-core online softmax (attention_math.h's tile step, with bf16 P) ----
// Scores are fp32 accumulations of bf16(q) * bf16 k products, times the scale. P is rounded to
// bf16 for the PV mma and l sums the same rounded p, so the output is the exact convex
// combination sum_j p_j v_j / sum_j p_j of the weights the mma used (up to fp32 sums).

// exp(s - m) rounded to bf16 (as the PV mma consumes it), returned as the exact fp32 value.
MOE_HD float tc_prob(float s, float m_new) {
  return bf16_bits_to_f32(f32_to_bf16_bits(softmax_weight(s, m_new)));
}

// Two bf16 values in one 32-bit mma operand register: lo in bits 0..15, hi in bits 16..31.
MOE_HD uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(f32_to_bf16_bits(lo)) |
         (static_cast<uint32_t>(f32_to_bf16_bits(hi)) << 16);
}

// ---- fragments of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA) ----
// lane = 4 * group + t. A (16 x 16, row-major) in 4 registers of 2 bf16, B (16 x 8, k x n) in 2
// registers of 2 bf16, C/D (16 x 8 fp32) in 4 floats. `half` picks the low (0) or high (1) bf16.
MOE_HD int mma_a_row(int lane, int reg) {
  return (lane >> 2) + 8 * (reg & 1);
}
MOE_HD int mma_a_col(int lane, int reg, int half) {
  return 2 * (lane & 3) + half + 8 * (reg >> 1);
}
MOE_HD int mma_b_k(int lane, int reg, int half) {
  return 2 * (lane & 3) + half + 8 * reg;
}
MOE_HD int mma_b_n(int lane) {
  return lane >> 2;
}
MOE_HD int mma_c_row(int lane, int idx) {
  return (lane >> 2) + 8 * (idx >> 1);
}
MOE_HD int mma_c_col(int lane, int idx) {
  return 2 * (lane & 3) + (idx & 1);
}

// ---- fixed-grid (graph-safe) decode ----
inline constexpr int kFixedWarps = 4;
inline constexpr int kFixedHeadsPerWarp = 2;
inline constexpr int kFixedHeadsPerBlock =
    kFixedWarps * kFixedHeadsPerWarp;         // query heads per block
inline constexpr int kFixedKeyTile = 32;      // keys per shared tile: one per lane
inline constexpr int kFixedMaxHeadDim = 256;  // 8 output dims per lane
inline constexpr int64_t kFixedMinKeysPerSplit = 256;
inline constexpr int64_t kFixedMaxSplits = 32;

// Where a new row of a fixed-grid batch belongs. valid is false for a row no sequence covers or
// whose sequence does not fit the cache (the host cannot check device metadata): such a row
// appends nothing and its output is 0.
struct FixedGridRow {
  bool valid = false;
  int64_t pos = 0;        // absolute position of the row's token
  int64_t cache_row = 0;  // cache row of position 0 of its sequence: slot * max_len
};

// Linear scan (decode batches are small and seqs need not be sorted); the first covering
// sequence wins.
MOE_HD FixedGridRow fixed_grid_row(const AttentionSeq* seqs, int64_t num_seqs, int64_t row,
                                   int64_t num_slots, int64_t max_len) {
  FixedGridRow out;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq q = seqs[s];
    if (row < q.row_begin || row >= q.row_begin + q.num_new) continue;
    if (q.past_len < 0 || q.cache_slot < 0 || q.cache_slot >= num_slots ||
        q.past_len + q.num_new > max_len) {
      return out;
    }
    out.valid = true;
    out.pos = q.past_len + (row - q.row_begin);
    out.cache_row = q.cache_slot * max_len;
    return out;
  }
  return out;
}

// Fixed key split of a fixed-grid launch: split sp covers keys [sp * chunk, (sp + 1) * chunk) of
// the max_len positions; chunk is a multiple of kFixedKeyTile.
struct FixedGridSplits {
  int64_t num_splits = 1;
  int64_t chunk = 0;
};

// Depends only on (num_rows, kv heads x head blocks, max_len, num_sms), never on the lengths:
// enough splits that the grid reaches ~2 waves when a batch is small, each at least
// kFixedMinKeysPerSplit keys of the cache.
MOE_HD FixedGridSplits fixed_grid_splits(int64_t num_rows, int64_t blocks_per_row, int64_t max_len,
                                         int64_t num_sms) {
  FixedGridSplits out;
  const int64_t base = num_rows * blocks_per_row;
  const int64_t target = 2 * (num_sms > 1 ? num_sms : 1);
  int64_t want = base <= 0 ? 1 : (target + base - 1) / base;
  const int64_t by_len = max_len / kFixedMinKeysPerSplit;
  if (want > by_len) want = by_len;
  if (want > kFixedMaxSplits) want = kFixedMaxSplits;
  if (want < 1) want = 1;
  const int64_t per = (max_len + want - 1) / want;
  out.chunk = (per + kFixedKeyTile - 1) / kFixedKeyTile * kFixedKeyTile;
  if (out.chunk < kFixedKeyTile) out.chunk = kFixedKeyTile;
  out.num_splits = (max_len + out.chunk - 1) / out.chunk;
  if (out.num_splits < 1) out.num_splits = 1;
  return out;
}

// Splits holding at least one key of a row at position pos: [0, live). A split past it exits
// without writing; the combine merges only the live ones.
MOE_HD int64_t fixed_grid_live_splits(int64_t pos, int64_t chunk) {
  return pos / chunk + 1;
}

// Keys of split sp for a row at position pos: [begin, end), empty when sp is not live.
MOE_HD void fixed_grid_split_keys(int64_t pos, int64_t chunk, int64_t sp, int64_t* begin,
                                  int64_t* end) {
  *begin = sp * chunk;
  const int64_t e = (sp + 1) * chunk;
  *end = e < pos + 1 ? e : pos + 1;
  if (*end < *begin) *end = *begin;
}

// Partial slot of (row, split): partial_o [num_rows * num_splits, H, D], partial_ml [.., H, 2].
MOE_HD int64_t fixed_grid_partial_slot(int64_t row, int64_t split, int64_t num_splits) {
  return row * num_splits + split;
}

}  // namespace moe::kernels::cuda
