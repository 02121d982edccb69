// Host plan of one attention call on the GPU: the list of thread-block work items (a tile of
// query rows of one sequence and one kv head, over one range of key positions), the KV-cache
// append list and, for sequences whose keys are split across blocks (flash-decoding), where the
// partial results go and how they are merged. Pure host code: unit-tested on the CPU, including
// an emulation of the kernel's online softmax over exactly these work items.
//
// Query rows: row (token t, head h) of q [T, H, D]. A work item covers tokens
// [first token, + num_tokens) x heads [head_begin, + num_heads) (at most kAttnBlockRows rows, all
// sharing kv head h / (H / KV)) and keys [key_begin, key_end); a row at position p only uses keys
// <= p. Sequences with num_splits == 1 write the normalised output directly; others write
//   partial_o  [slots, H, D]  unnormalised sum of exp(s - m) * v over the split's keys
//   partial_ml [slots, H, 2]  (m, l) of the split
// with slot = partial_base + token_in_tile * num_splits + split, merged by the combine step.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/op_args.h"

namespace moe::kernels::cuda {

inline constexpr int kAttnWarps = 4;
inline constexpr int kAttnRowsPerWarp = 4;
inline constexpr int kAttnBlockRows = kAttnWarps * kAttnRowsPerWarp;  // (token, head) rows
inline constexpr int kAttnKeyTile = 32;      // keys per shared-memory tile: one per lane
inline constexpr int kAttnMaxHeadDim = 256;  // 8 output dims per lane
inline constexpr int kAttnMinKeysPerSplit = 64;
inline constexpr int kAttnMaxSplits = 64;

// Plain int32 struct, uploaded as is (48 bytes); the plan checks every value fits.
struct AttentionWorkItem {
  int32_t row_begin = 0;  // q/out row of the tile's first token
  int32_t first_pos = 0;  // position of the tile's first token
  int32_t num_tokens = 0;
  int32_t head_begin = 0;
  int32_t num_heads = 0;
  int32_t kv_head = 0;
  int32_t cache_row0 = 0;  // cache row of position 0 of the sequence: slot * max_len
  int32_t key_begin = 0;
  int32_t key_end = 0;
  int32_t split = 0;
  int32_t num_splits = 1;
  int32_t partial_base = 0;  // partial slot of the tile's first token, split 0
};
static_assert(sizeof(AttentionWorkItem) == 48);

// One token row whose splits the combine step merges.
struct AttentionCombineRow {
  int32_t row = 0;
  int32_t partial_base = 0;  // slot of split 0; splits are consecutive slots
  int32_t num_splits = 0;
};

// Copy of a new k/v row into the cache: cache row dst_row (= slot * max_len + position).
struct KvAppendRow {
  int32_t src_row = 0;
  int32_t dst_row = 0;
};

struct AttentionPlan {
  std::vector<AttentionWorkItem> items;
  std::vector<AttentionCombineRow> combine;
  std::vector<KvAppendRow> append;
  int64_t num_partial_slots = 0;
  int64_t tokens_per_tile = 0;
  int64_t heads_per_tile = 0;
};

// Throws moe::Error unless sequence s (index for the message) fits the cache: non-negative
// sizes, a slot below cache_num_slots, past_len + num_new <= cache_max_len. Every attention plan
// checks its sequences with it.
void check_attention_seq(const AttentionSeq& q, int64_t s, int64_t cache_num_slots,
                         int64_t cache_max_len);

// Validates geometry and every sequence against the cache (slot in range, past_len + num_new <=
// max_len, head_dim <= kAttnMaxHeadDim, H % KV == 0) and builds the plan. num_sms steers how far
// long decode-like sequences are split so the grid fills the device. Throws moe::Error.
AttentionPlan plan_attention(const AttentionSeq* seqs, int64_t num_seqs, AttentionShape shape,
                             int64_t cache_num_slots, int64_t cache_max_len, int num_sms);

}  // namespace moe::kernels::cuda
