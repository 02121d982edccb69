// Builds the attention work decomposition (see attention_plan.h): tiles of at most
// kAttnBlockRows query rows per block, key splits for sequences with few new tokens and a long
// cache, and the KV append list. Host-only.
#include "kernels/cuda/attention_plan.h"

#include <algorithm>
#include <climits>

#include "kernels/common/check.h"

namespace moe::kernels::cuda {
namespace {

int32_t to_i32(int64_t v, const char* what) {
  MOE_CHECK(v >= INT32_MIN && v <= INT32_MAX, "attention: {} = {} does not fit int32", what, v);
  return static_cast<int32_t>(v);
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

void check_attention_seq(const AttentionSeq& q, int64_t s, int64_t cache_num_slots,
                         int64_t cache_max_len) {
  MOE_CHECK(q.num_new >= 0 && q.past_len >= 0 && q.row_begin >= 0,
            "attention: sequence {} has row_begin {} num_new {} past_len {}", s, q.row_begin,
            q.num_new, q.past_len);
  MOE_CHECK(q.cache_slot >= 0 && q.cache_slot < cache_num_slots,
            "attention: sequence {} uses cache slot {} of {}", s, q.cache_slot, cache_num_slots);
  MOE_CHECK(q.past_len + q.num_new <= cache_max_len,
            "attention: sequence {} needs {} cache positions, the cache holds {}", s,
            q.past_len + q.num_new, cache_max_len);
}

AttentionPlan plan_attention(const AttentionSeq* seqs, int64_t num_seqs, AttentionShape shape,
                             int64_t cache_num_slots, int64_t cache_max_len, int num_sms) {
  const int64_t H = shape.num_heads, KV = shape.num_kv_heads, D = shape.head_dim;
  MOE_CHECK(H > 0 && KV > 0 && D > 0 && H % KV == 0,
            "attention: bad shape (heads {}, kv heads {}, head_dim {})", H, KV, D);
  MOE_CHECK(D <= kAttnMaxHeadDim, "attention: head_dim {} > {} is not supported on CUDA", D,
            kAttnMaxHeadDim);
  MOE_CHECK(num_seqs >= 0, "attention: num_seqs {} < 0", num_seqs);
  to_i32(cache_num_slots * cache_max_len, "cache rows (num_slots * max_len)");
  const int64_t G = H / KV;

  AttentionPlan plan;
  plan.heads_per_tile = std::min<int64_t>(G, kAttnBlockRows);
  plan.tokens_per_tile = std::max<int64_t>(1, kAttnBlockRows / plan.heads_per_tile);
  const int64_t head_slices = ceil_div(G, plan.heads_per_tile);

  int64_t base_blocks = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& q = seqs[s];
    check_attention_seq(q, s, cache_num_slots, cache_max_len);
    to_i32(q.row_begin + q.num_new, "q row");
    base_blocks += ceil_div(q.num_new, plan.tokens_per_tile) * KV * head_slices;
  }
  // Blocks wanted per unsplit block so the grid reaches ~2 waves of the device.
  const int64_t target_blocks = 2 * std::max(1, num_sms);
  const int64_t want_splits =
      base_blocks == 0 ? 1 : std::max<int64_t>(1, ceil_div(target_blocks, base_blocks));

  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& q = seqs[s];
    if (q.num_new == 0) continue;
    const int64_t key_len = q.past_len + q.num_new;
    const int64_t cache_row0 = q.cache_slot * cache_max_len;
    for (int64_t i = 0; i < q.num_new; ++i) {
      plan.append.push_back(
          {to_i32(q.row_begin + i, "q row"), to_i32(cache_row0 + q.past_len + i, "cache row")});
    }

    // Split only sequences that fit one token tile (decode-like): their blocks all see the full
    // key range, and prefill tiles already give the grid enough blocks.
    int64_t num_splits = 1;
    int64_t chunk = key_len;
    if (q.num_new <= plan.tokens_per_tile && want_splits > 1) {
      num_splits = std::min(
          {want_splits, key_len / kAttnMinKeysPerSplit, static_cast<int64_t>(kAttnMaxSplits)});
      num_splits = std::max<int64_t>(1, num_splits);
      if (num_splits > 1) {
        chunk = ceil_div(ceil_div(key_len, num_splits), kAttnKeyTile) * kAttnKeyTile;
        num_splits = ceil_div(key_len, chunk);
      }
      if (num_splits == 1) chunk = key_len;
    }
    const int64_t partial_base = plan.num_partial_slots;
    if (num_splits > 1) {
      for (int64_t i = 0; i < q.num_new; ++i) {
        plan.combine.push_back({to_i32(q.row_begin + i, "q row"),
                                to_i32(partial_base + i * num_splits, "partial slot"),
                                to_i32(num_splits, "splits")});
      }
      plan.num_partial_slots += q.num_new * num_splits;
      to_i32(plan.num_partial_slots * H, "partial rows");
    }

    // Later tiles see more keys (causal): schedule them first to shorten the tail.
    const int64_t num_tiles = ceil_div(q.num_new, plan.tokens_per_tile);
    for (int64_t tile = num_tiles - 1; tile >= 0; --tile) {
      const int64_t t0 = tile * plan.tokens_per_tile;
      const int64_t nt = std::min(plan.tokens_per_tile, q.num_new - t0);
      const int64_t last_pos = q.past_len + t0 + nt - 1;
      for (int64_t g = 0; g < KV; ++g) {
        for (int64_t hs = 0; hs < head_slices; ++hs) {
          const int64_t h0 = g * G + hs * plan.heads_per_tile;
          const int64_t nh = std::min(plan.heads_per_tile, (g + 1) * G - h0);
          for (int64_t sp = 0; sp < num_splits; ++sp) {
            AttentionWorkItem item;
            item.row_begin = to_i32(q.row_begin + t0, "q row");
            item.first_pos = to_i32(q.past_len + t0, "position");
            item.num_tokens = to_i32(nt, "tokens");
            item.head_begin = to_i32(h0, "head");
            item.num_heads = to_i32(nh, "heads");
            item.kv_head = to_i32(g, "kv head");
            item.cache_row0 = to_i32(cache_row0, "cache row");
            item.key_begin = to_i32(std::min(sp * chunk, last_pos + 1), "key");
            item.key_end = to_i32(std::min((sp + 1) * chunk, last_pos + 1), "key");
            item.split = to_i32(sp, "split");
            item.num_splits = to_i32(num_splits, "splits");
            item.partial_base = to_i32(partial_base + t0 * num_splits, "partial slot");
            plan.items.push_back(item);
          }
        }
      }
    }
  }
  return plan;
}

}  // namespace moe::kernels::cuda
