// Attention work plan: every (token, head) row sees exactly the keys [0, its position] across
// its work items, tiles respect the block size and the GQA grouping, decode-like sequences are
// split only when the grid is small, bad inputs throw. Then the kernel's algorithm (32-key tiles,
// online softmax, split merge) is emulated on the CPU over exactly these work items and compared
// with the naive reference attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/cuda/attention_math.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/device_math.h"
#include "tests/gpu_host/attention_case.h"

namespace moe::kernels::cuda {
namespace {

using Case = moe::test::AttentionCase;

// Checks the covering property of the plan for every (token row, head).
void check_coverage(const Case& c, const AttentionPlan& plan) {
  const int64_t H = c.shape.num_heads, G = H / c.shape.num_kv_heads;
  // (row, head) -> key intervals
  std::map<std::pair<int64_t, int64_t>, std::vector<std::pair<int64_t, int64_t>>> seen;
  for (const AttentionWorkItem& it : plan.items) {
    ASSERT_GE(it.num_tokens, 1);
    ASSERT_GE(it.num_heads, 1);
    ASSERT_LE(it.num_tokens * it.num_heads, kAttnBlockRows);
    ASSERT_LE(it.key_begin, it.key_end);
    for (int t = 0; t < it.num_tokens; ++t) {
      const int64_t pos = it.first_pos + t;
      for (int hh = 0; hh < it.num_heads; ++hh) {
        const int64_t h = it.head_begin + hh;
        ASSERT_EQ(h / G, it.kv_head) << "a tile mixes kv heads";
        const int64_t lo = it.key_begin, hi = std::min<int64_t>(it.key_end, pos + 1);
        if (lo < hi) seen[{it.row_begin + t, h}].push_back({lo, hi});
      }
    }
  }
  for (const AttentionSeq& s : c.seqs) {
    for (int64_t i = 0; i < s.num_new; ++i) {
      const int64_t pos = s.past_len + i;
      for (int64_t h = 0; h < H; ++h) {
        auto ranges = seen[{s.row_begin + i, h}];
        std::sort(ranges.begin(), ranges.end());
        int64_t next = 0;
        for (const auto& [lo, hi] : ranges) {
          ASSERT_EQ(lo, next) << "row " << s.row_begin + i << " head " << h << ": gap or overlap";
          next = hi;
        }
        ASSERT_EQ(next, pos + 1) << "row " << s.row_begin + i << " head " << h;
      }
    }
  }
  // KV append: one cache row per new token, at slot * max_len + position.
  std::vector<KvAppendRow> want;
  for (const AttentionSeq& s : c.seqs) {
    for (int64_t i = 0; i < s.num_new; ++i) {
      want.push_back({static_cast<int32_t>(s.row_begin + i),
                      static_cast<int32_t>(s.cache_slot * c.max_len + s.past_len + i)});
    }
  }
  ASSERT_EQ(plan.append.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(plan.append[i].src_row, want[i].src_row);
    EXPECT_EQ(plan.append[i].dst_row, want[i].dst_row);
  }
}

// The CUDA kernel's algorithm, serially: same tiles, same masking, same online-softmax step and
// split merge (attention_math.h), same bf16 rounding of appended rows (the cache is held as fp32
// values here).
void emulate(const Case& c, const AttentionPlan& plan, const float* q, const float* k,
             const float* v, float* cache_k, float* cache_v, float* out) {
  const int64_t H = c.shape.num_heads, D = c.shape.head_dim, W = c.kv_width();
  for (const KvAppendRow& a : plan.append) {
    for (int64_t j = 0; j < W; ++j) {
      cache_k[int64_t{a.dst_row} * W + j] = round_to_bf16(k[a.src_row * W + j]);
      cache_v[int64_t{a.dst_row} * W + j] = round_to_bf16(v[a.src_row * W + j]);
    }
  }
  std::vector<float> part_o(plan.num_partial_slots * H * D),
      part_ml(plan.num_partial_slots * H * 2);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  for (const AttentionWorkItem& it : plan.items) {
    const int64_t at0 = int64_t{it.cache_row0} * W + int64_t{it.kv_head} * D;
    auto key = [&](int64_t j, int64_t d) { return cache_k[at0 + j * W + d]; };
    auto value = [&](int64_t j, int64_t d) { return cache_v[at0 + j * W + d]; };
    for (int r = 0; r < it.num_tokens * it.num_heads; ++r) {
      const int token = r / it.num_heads;
      const int64_t h = it.head_begin + r % it.num_heads;
      const float* qr = q + ((it.row_begin + token) * H + h) * D;
      moe::test::EmulatedRow row(D);
      for (int kb = it.key_begin; kb < it.key_end; kb += kAttnKeyTile) {
        moe::test::emulate_attend_tile(qr, D, kb, std::min(kAttnKeyTile, it.key_end - kb),
                                       it.first_pos + token, scale, key, value, row);
      }
      if (it.num_splits == 1) {
        for (int64_t d = 0; d < D; ++d) {
          out[((it.row_begin + token) * H + h) * D + d] = row.o[d] * attn_inv_l(row.l);
        }
      } else {
        const int64_t slot = it.partial_base + int64_t{token} * it.num_splits + it.split;
        moe::test::store_emulated_partial(row, slot, H, h, part_o, part_ml);
      }
    }
  }
  for (const AttentionCombineRow& cr : plan.combine) {
    for (int64_t h = 0; h < H; ++h) {
      moe::test::emulate_combine_splits(part_o, part_ml, cr.partial_base, cr.num_splits, H, h, D,
                                        out + (int64_t{cr.row} * H + h) * D);
    }
  }
}

void run_emulation(const Case& c, int num_sms, uint32_t seed) {
  const AttentionPlan plan = plan_attention(c.seqs.data(), static_cast<int64_t>(c.seqs.size()),
                                            c.shape, c.num_slots, c.max_len, num_sms);
  check_coverage(c, plan);
  // q, k, v and past cache entries are bf16-exact, so the kernel's rounding on append is exact
  // and the fp32 reference sees the same keys and values.
  const moe::test::AttentionInputs in =
      moe::test::make_attention_inputs(c, seed, /*q_bf16_exact=*/true);
  std::vector<float> ck(in.cache_k), cv(in.cache_v), rk, rv;
  std::vector<float> got(in.q.size(), -7.0f);
  emulate(c, plan, in.q.data(), in.k.data(), in.v.data(), ck.data(), cv.data(), got.data());
  const std::vector<float> want = moe::test::reference_attention(c, in, -7.0f, &rk, &rv);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 2e-5 + 1e-4 * std::fabs(want[i])) << "element " << i;
  }
  for (size_t i = 0; i < ck.size(); ++i) {
    ASSERT_TRUE((std::isnan(ck[i]) && std::isnan(rk[i])) || ck[i] == rk[i]) << "cache k " << i;
    ASSERT_TRUE((std::isnan(cv[i]) && std::isnan(rv[i])) || cv[i] == rv[i]) << "cache v " << i;
  }
}

Case prefill_case() {
  // Three sequences: fresh prompt, prompt continuing a cache, and a 1-token step; rows not in
  // sequence order and a gap row (7) nobody uses.
  return {{{8, 23, 0, 2}, {0, 5, 40, 0}, {5, 1, 12, 3}}, {8, 2, 16}, 4, 96};
}

Case decode_case() {
  return {{{0, 1, 700, 0}, {1, 1, 63, 1}, {2, 1, 300, 2}, {3, 2, 129, 3}}, {8, 2, 16}, 4, 800};
}

TEST(AttentionPlan, PrefillRowsSeeExactlyTheirCausalKeys) {
  const Case c = prefill_case();
  const AttentionPlan plan = plan_attention(c.seqs.data(), 3, c.shape, 4, 96, 4);
  check_coverage(c, plan);
  EXPECT_EQ(plan.heads_per_tile, 4);   // G = 4 query heads per kv head
  EXPECT_EQ(plan.tokens_per_tile, 4);  // 16 rows per block
  EXPECT_TRUE(plan.combine.empty());   // enough blocks: nothing split
  EXPECT_EQ(plan.num_partial_slots, 0);
}

TEST(AttentionPlan, DecodeOnABigDeviceSplitsLongCachesOnly) {
  const Case c = decode_case();
  const AttentionPlan plan = plan_attention(c.seqs.data(), 4, c.shape, 4, 800, 132);
  check_coverage(c, plan);
  std::map<int, int> splits_of_row;
  for (const auto& cr : plan.combine) splits_of_row[cr.row] = cr.num_splits;
  EXPECT_GT(splits_of_row[0], 1);         // 701 keys
  EXPECT_EQ(splits_of_row.count(1), 0u);  // 64 keys: too short to split
  EXPECT_GT(splits_of_row[3], 1);         // 2 new tokens fit one tile
  for (const AttentionWorkItem& it : plan.items) {
    if (it.num_splits > 1 && it.key_end < it.first_pos + it.num_tokens) {
      EXPECT_EQ((it.key_end - it.key_begin) % kAttnKeyTile, 0) << "inner split not tile-aligned";
    }
    EXPECT_LE(it.num_splits, kAttnMaxSplits);
  }
  // Partial slots: consecutive per row, no two rows share one.
  int64_t slots = 0;
  for (const auto& cr : plan.combine) slots += cr.num_splits;
  EXPECT_EQ(slots, plan.num_partial_slots);
}

TEST(AttentionPlan, ASmallDeviceNeedsNoSplits) {
  const Case c = decode_case();
  const AttentionPlan plan = plan_attention(c.seqs.data(), 4, c.shape, 4, 800, 1);
  check_coverage(c, plan);
  EXPECT_TRUE(plan.combine.empty());
}

TEST(AttentionPlan, ManyQueryHeadsPerKvHeadAreSlicedIntoTiles) {
  const Case c{{{0, 3, 4, 0}}, {40, 1, 8}, 1, 16};  // G = 40 > 16 rows per block
  const AttentionPlan plan = plan_attention(c.seqs.data(), 1, c.shape, 1, 16, 1);
  check_coverage(c, plan);
  EXPECT_EQ(plan.heads_per_tile, 16);
  EXPECT_EQ(plan.tokens_per_tile, 1);
  EXPECT_EQ(plan.items.size(), 3u * 3u);  // 3 tokens x ceil(40 / 16) head slices
}

TEST(AttentionPlan, RejectsSequencesThatDoNotFitTheCache) {
  AttentionSeq s{0, 4, 10, 0};
  EXPECT_THROW(plan_attention(&s, 1, {4, 2, 8}, 1, 13, 8), moe::Error);  // 14 > 13 positions
  s = {0, 4, 0, 1};
  EXPECT_THROW(plan_attention(&s, 1, {4, 2, 8}, 1, 13, 8), moe::Error);  // slot 1 of 1
  s = {0, 4, 0, 0};
  EXPECT_THROW(plan_attention(&s, 1, {4, 3, 8}, 1, 13, 8), moe::Error);    // 4 % 3 != 0
  EXPECT_THROW(plan_attention(&s, 1, {4, 2, 512}, 1, 13, 8), moe::Error);  // head_dim > 256
  EXPECT_NO_THROW(plan_attention(&s, 1, {4, 2, 256}, 1, 13, 8));
}

TEST(AttentionPlan, EmptyBatchGivesNoWork) {
  const AttentionSeq s{0, 0, 5, 0};
  const AttentionPlan plan = plan_attention(&s, 1, {4, 2, 8}, 1, 8, 8);
  EXPECT_TRUE(plan.items.empty());
  EXPECT_TRUE(plan.append.empty());
}

TEST(AttentionEmulation, PrefillMatchesReference) {
  run_emulation(prefill_case(), 4, 11);
}

TEST(AttentionEmulation, SplitDecodeMatchesReference) {
  run_emulation(decode_case(), 132, 12);
}

TEST(AttentionEmulation, WideGqaGroupsOddHeadDimAndSplitsMatchReference) {
  run_emulation({{{0, 3, 40, 0}, {3, 1, 200, 1}}, {40, 2, 24}, 2, 210}, 64, 13);
}

}  // namespace
}  // namespace moe::kernels::cuda
