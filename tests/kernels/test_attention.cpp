// Causal GQA attention with a KV cache against the reference: MHA and GQA (4 query heads per kv
// head), several sequences of different lengths and past lengths in one call, both the decode
// loop and the GEMM prefill path, and prefill-then-decode == one full prefill via the cache.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernel_test_util.h"
#include "kernels/common/check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"

namespace moe::kernels::test {
namespace {

namespace cpu = moe::kernels::cpu;
namespace ref = moe::kernels::cpu::reference;

constexpr Tol kTolAttention{2e-5, 1e-4};

// A KV cache owned by the test; unwritten positions hold NaN so reading one poisons the output.
struct Cache {
  Cache(int64_t slots, int64_t max_len, AttentionShape s)
      : k(slots * max_len * s.num_kv_heads * s.head_dim, std::numeric_limits<float>::quiet_NaN()),
        v(k.size(), std::numeric_limits<float>::quiet_NaN()),
        num_slots(slots),
        max_len(max_len) {}
  KvCacheView view() { return {k.data(), v.data(), num_slots, max_len}; }
  std::vector<float> k, v;
  int64_t num_slots, max_len;
};

struct Batch {
  std::vector<float> q, k, v;
};

Batch random_batch(std::mt19937& rng, int64_t rows, AttentionShape s) {
  // Spread of +-2 gives peaked-but-not-degenerate softmax rows.
  return {random_floats(rng, rows * s.num_heads * s.head_dim, -2.0f, 2.0f),
          random_floats(rng, rows * s.num_kv_heads * s.head_dim, -2.0f, 2.0f),
          random_floats(rng, rows * s.num_kv_heads * s.head_dim, -2.0f, 2.0f)};
}

// Fills positions [0, len) of a slot with random past keys/values (same in both caches).
void fill_past(std::mt19937& rng, Cache& a, Cache& b, int64_t slot, int64_t len, AttentionShape s) {
  const int64_t width = s.num_kv_heads * s.head_dim;
  for (int64_t pos = 0; pos < len; ++pos) {
    for (int64_t j = 0; j < width; ++j) {
      const int64_t at = (slot * a.max_len + pos) * width + j;
      a.k[at] = b.k[at] = std::uniform_real_distribution<float>(-2, 2)(rng);
      a.v[at] = b.v[at] = std::uniform_real_distribution<float>(-2, 2)(rng);
    }
  }
}

int64_t total_rows(const std::vector<AttentionSeq>& seqs) {
  int64_t n = 0;
  for (const auto& s : seqs) n = std::max(n, s.row_begin + s.num_new);
  return n;
}

// Runs fast and reference on the same inputs and compares outputs and the resulting caches.
void check_against_reference(std::mt19937& rng, AttentionShape shape,
                             const std::vector<AttentionSeq>& seqs, int64_t slots,
                             int64_t max_len) {
  Cache fast_cache(slots, max_len, shape), ref_cache(slots, max_len, shape);
  for (const auto& s : seqs) fill_past(rng, fast_cache, ref_cache, s.cache_slot, s.past_len, shape);
  const int64_t rows = total_rows(seqs);
  Batch b = random_batch(rng, rows, shape);
  const int64_t width = shape.num_heads * shape.head_dim;
  std::vector<float> got(rows * width, -7.0f), want(rows * width, -7.0f);
  cpu::attention(b.q.data(), b.k.data(), b.v.data(), seqs.data(), seqs.size(), shape,
                 fast_cache.view(), got.data());
  ref::attention(b.q.data(), b.k.data(), b.v.data(), seqs.data(), seqs.size(), shape,
                 ref_cache.view(), want.data());
  EXPECT_TRUE(all_close(got, want, kTolAttention));
  EXPECT_TRUE(all_close(fast_cache.k, ref_cache.k, Tol{0, 0})) << "k cache differs";
  EXPECT_TRUE(all_close(fast_cache.v, ref_cache.v, Tol{0, 0})) << "v cache differs";
}

TEST(Attention, SingleTokenDecodeMatchesReference) {
  std::mt19937 rng(30);
  AttentionShape shape{4, 4, 16};
  check_against_reference(rng, shape, {{0, 1, 0, 0}}, 1, 8);    // first token: only itself
  check_against_reference(rng, shape, {{0, 1, 37, 0}}, 1, 40);  // long past
}

TEST(Attention, PrefillMatchesReferenceMultiHead) {
  std::mt19937 rng(31);
  check_against_reference(rng, AttentionShape{3, 3, 32}, {{0, 50, 0, 0}}, 1, 64);
}

TEST(Attention, GqaFourQueryHeadsPerKvHeadMatchesReference) {
  std::mt19937 rng(32);
  // 8 query heads on 2 kv heads, and 4 on 1; prefill across a query-block boundary (64).
  check_against_reference(rng, AttentionShape{8, 2, 16}, {{0, 70, 0, 0}}, 1, 80);
  check_against_reference(rng, AttentionShape{4, 1, 24}, {{0, 5, 3, 0}}, 1, 8);
  check_against_reference(rng, AttentionShape{4, 1, 128}, {{0, 130, 11, 0}}, 1, 141);
}

TEST(Attention, SeveralSequencesOfDifferentLengthsInOneCall) {
  std::mt19937 rng(33);
  AttentionShape shape{8, 2, 32};
  // {row_begin, num_new, past_len, cache_slot}: decode rows, a prefill crossing a query block,
  // a chunk continuing a past, an empty sequence, slots out of order.
  std::vector<AttentionSeq> seqs = {{0, 1, 5, 3},  {1, 17, 0, 0}, {18, 70, 9, 2},
                                    {88, 3, 0, 4}, {91, 0, 4, 1}, {91, 9, 30, 1}};
  check_against_reference(rng, shape, seqs, 5, 100);
}

// Runs a sequence of length n in chunks via the cache; returns the concatenated outputs.
std::vector<float> run_in_chunks(const Batch& b, AttentionShape shape,
                                 const std::vector<int64_t>& chunks, int64_t max_len) {
  Cache cache(2, max_len, shape);
  const int64_t width = shape.num_heads * shape.head_dim;
  int64_t n = 0;
  for (int64_t c : chunks) n += c;
  std::vector<float> out(n * width, -7.0f);
  int64_t done = 0;
  for (int64_t c : chunks) {
    // The chunk's rows sit at row_begin = done of the whole-sequence q/k/v.
    AttentionSeq s{done, c, done, 1};
    cpu::attention(b.q.data(), b.k.data(), b.v.data(), &s, 1, shape, cache.view(), out.data());
    done += c;
  }
  return out;
}

TEST(Attention, PrefillThenDecodeEqualsFullPrefill) {
  std::mt19937 rng(34);
  AttentionShape shape{8, 2, 64};
  const int64_t n = 40;
  Batch b = random_batch(rng, n, shape);
  auto full = run_in_chunks(b, shape, {n}, 48);
  auto decode = run_in_chunks(b, shape, {33, 1, 1, 1, 1, 1, 1, 1}, 48);
  auto chunked = run_in_chunks(b, shape, {9, 20, 3, 8}, 48);
  EXPECT_TRUE(all_close(decode, full, kTolAttention));
  EXPECT_TRUE(all_close(chunked, full, kTolAttention));
}

TEST(Attention, PeakedScoresWithDeepUnderflowMatchReference) {
  // q, k ~ +-12 over head_dim 64: scaled scores spread over hundreds, so most softmax terms
  // underflow and a few dominate; both the decode loop and the GEMM path.
  std::mt19937 rng(36);
  AttentionShape shape{4, 1, 64};
  for (int64_t n : {3, 40}) {
    Cache fast_cache(1, n, shape), ref_cache(1, n, shape);
    Batch b{random_floats(rng, n * 4 * 64, -12.0f, 12.0f),
            random_floats(rng, n * 64, -12.0f, 12.0f), random_floats(rng, n * 64, -2.0f, 2.0f)};
    std::vector<float> got(n * 4 * 64), want(n * 4 * 64);
    AttentionSeq s{0, n, 0, 0};
    cpu::attention(b.q.data(), b.k.data(), b.v.data(), &s, 1, shape, fast_cache.view(), got.data());
    ref::attention(b.q.data(), b.k.data(), b.v.data(), &s, 1, shape, ref_cache.view(), want.data());
    EXPECT_TRUE(all_close(got, want, Tol{1e-4, 1e-4})) << "tokens " << n;
  }
}

TEST(Attention, FirstTokenOutputIsItsOwnValue) {
  // With one visible key the softmax is exactly 1: output == v of the kv head.
  std::mt19937 rng(35);
  AttentionShape shape{4, 2, 8};
  Batch b = random_batch(rng, 1, shape);
  Cache cache(1, 4, shape);
  std::vector<float> out(4 * 8);
  AttentionSeq s{0, 1, 0, 0};
  cpu::attention(b.q.data(), b.k.data(), b.v.data(), &s, 1, shape, cache.view(), out.data());
  for (int64_t h = 0; h < 4; ++h) {
    for (int64_t d = 0; d < 8; ++d) EXPECT_FLOAT_EQ(out[h * 8 + d], b.v[(h / 2) * 8 + d]);
  }
}

TEST(Attention, RejectsSequenceOverflowingCache) {
  AttentionShape shape{2, 1, 4};
  Cache cache(1, 8, shape);
  Batch b{std::vector<float>(3 * 8), std::vector<float>(3 * 4), std::vector<float>(3 * 4)};
  std::vector<float> out(3 * 8);
  AttentionSeq s{0, 3, 6, 0};
  EXPECT_THROW(
      cpu::attention(b.q.data(), b.k.data(), b.v.data(), &s, 1, shape, cache.view(), out.data()),
      moe::Error);
  // Nothing was written into the cache.
  for (float x : cache.k) EXPECT_TRUE(std::isnan(x));
}

TEST(Attention, RejectsCacheSlotOutOfRange) {
  AttentionShape shape{2, 1, 4};
  Cache cache(2, 8, shape);
  Batch b{std::vector<float>(8), std::vector<float>(4), std::vector<float>(4)};
  std::vector<float> out(8);
  for (int64_t slot : {-1, 2}) {
    AttentionSeq s{0, 1, 0, slot};
    EXPECT_THROW(
        cpu::attention(b.q.data(), b.k.data(), b.v.data(), &s, 1, shape, cache.view(), out.data()),
        moe::Error);
  }
}

TEST(Attention, RejectsHeadsNotMultipleOfKvHeads) {
  AttentionShape shape{6, 4, 4};
  Cache cache(1, 8, shape);
  Batch b{std::vector<float>(24), std::vector<float>(16), std::vector<float>(16)};
  std::vector<float> out(24);
  AttentionSeq s{0, 1, 0, 0};
  EXPECT_THROW(
      cpu::attention(b.q.data(), b.k.data(), b.v.data(), &s, 1, shape, cache.view(), out.data()),
      moe::Error);
}

}  // namespace
}  // namespace moe::kernels::test
