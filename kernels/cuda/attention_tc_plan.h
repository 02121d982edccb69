// Host plan of the tensor-core prefill attention (attention_tc.cu): which CTA does which (sequence,
// kv head, 64-row tile of flattened (token, head-in-group) rows), plus the KV append rows of the
// planned sequences. Header-only host code (uses check.h, so never included by nvcc).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/attention_tc_math.h"
#include "kernels/op_args.h"

namespace moe::kernels::cuda {

struct AttentionTcPlan {
  std::vector<AttentionTcItem> items;
  std::vector<KvAppendRow> append;
};

// True when `seq` runs on the tensor-core kernel for this geometry (kAttnTcMinNewTokens).
inline bool use_attention_tc(const AttentionSeq& seq, AttentionShape shape) {
  return shape.head_dim == kTcHeadDim && shape.num_kv_heads > 0 &&
         shape.num_heads % shape.num_kv_heads == 0 && seq.num_new >= kAttnTcMinNewTokens;
}

// Validates every sequence against the cache (as plan_attention does) and lists one item per
// (sequence, kv head, row tile), ordered by keys read, most first (stable), so the long CTAs start
// early. Throws moe::Error.
inline AttentionTcPlan plan_attention_tc(const AttentionSeq* seqs, int64_t num_seqs,
                                         AttentionShape shape, int64_t cache_num_slots,
                                         int64_t cache_max_len) {
  const int64_t H = shape.num_heads, KV = shape.num_kv_heads, D = shape.head_dim;
  MOE_CHECK(H > 0 && KV > 0 && H % KV == 0 && D == kTcHeadDim,
            "attention (tensor cores): bad shape (heads {}, kv heads {}, head_dim {}; needs {})", H,
            KV, D, kTcHeadDim);
  MOE_CHECK(cache_num_slots * cache_max_len <= INT32_MAX,
            "attention: cache rows {} do not fit int32", cache_num_slots * cache_max_len);
  const int64_t G = H / KV;
  AttentionTcPlan plan;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& q = seqs[s];
    check_attention_seq(q, s, cache_num_slots, cache_max_len);
    MOE_CHECK(q.row_begin + q.num_new <= INT32_MAX && q.num_new * G <= INT32_MAX,
              "attention: sequence {} rows do not fit int32", s);
    if (q.num_new == 0) continue;
    const int64_t cache_row0 = q.cache_slot * cache_max_len;
    for (int64_t i = 0; i < q.num_new; ++i) {
      plan.append.push_back({static_cast<int32_t>(q.row_begin + i),
                             static_cast<int32_t>(cache_row0 + q.past_len + i)});
    }
    const int64_t rows = q.num_new * G;
    const int64_t tiles = (rows + kTcBlockRows - 1) / kTcBlockRows;
    for (int64_t t = tiles - 1; t >= 0; --t) {
      for (int64_t g = 0; g < KV; ++g) {
        AttentionTcItem it;
        it.row_begin = static_cast<int32_t>(q.row_begin);
        it.past_len = static_cast<int32_t>(q.past_len);
        it.num_new = static_cast<int32_t>(q.num_new);
        it.cache_row0 = static_cast<int32_t>(cache_row0);
        it.kv_head = static_cast<int32_t>(g);
        it.tile_row0 = static_cast<int32_t>(t * kTcBlockRows);
        it.key_end = tc_key_end(it.past_len, it.num_new, it.tile_row0, static_cast<int>(G));
        plan.items.push_back(it);
      }
    }
  }
  std::stable_sort(
      plan.items.begin(), plan.items.end(),
      [](const AttentionTcItem& a, const AttentionTcItem& b) { return a.key_end > b.key_end; });
  return plan;
}

}  // namespace moe::kernels::cuda
