// Set-up shared by the attention tests on the CPU (tests/gpu_host: the plan and the kernel
// emulations) and on the GPU (tests/gpu/test_cuda_attention.cpp): a batch of sequences over a KV
// cache, its seeded random inputs, the fp32 reference attention over them, and the serial form of
// the CUDA-core attention tile (kernels/cuda/attention_tile.cuh) built from the same
// attention_math.h arithmetic the kernels run.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/cpu/reference.h"
#include "kernels/cuda/attention_math.h"
#include "kernels/cuda/attention_plan.h"
#include "kernels/op_args.h"

namespace moe::test {

struct AttentionCase {
  std::vector<kernels::AttentionSeq> seqs;
  kernels::AttentionShape shape;
  int64_t num_slots = 0;
  int64_t max_len = 0;

  // q / out rows the batch spans (rows no sequence covers included).
  int64_t num_rows() const {
    int64_t n = 0;
    for (const auto& s : seqs) n = std::max(n, s.row_begin + s.num_new);
    return n;
  }
  int64_t kv_width() const { return shape.num_kv_heads * shape.head_dim; }
};

// Values uniform in [-1, 1]. q is bf16-exact only when asked (the tensor-core path rounds q, the
// others do not); the new k and v rows are bf16-exact, so the append to a bf16 cache rounds
// nothing. The cache is fp32 holding bf16 values: each sequence's past positions are filled and
// every other position is NaN, or every position is filled (fill_whole_cache: batches that move
// sequences to other slots and lengths).
struct AttentionInputs {
  std::vector<float> q, k, v;
  std::vector<float> cache_k, cache_v;
};

inline AttentionInputs make_attention_inputs(const AttentionCase& c, uint32_t seed,
                                             bool q_bf16_exact, bool fill_whole_cache = false) {
  const int64_t T = c.num_rows(), W = c.kv_width();
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto values = [&](int64_t n, bool bf16_exact) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& e : x) e = bf16_exact ? round_to_bf16(dist(rng)) : dist(rng);
    return x;
  };
  AttentionInputs in;
  in.q = values(T * c.shape.num_heads * c.shape.head_dim, q_bf16_exact);
  in.k = values(T * W, true);
  in.v = values(T * W, true);
  in.cache_k.assign(static_cast<size_t>(c.num_slots * c.max_len * W),
                    std::numeric_limits<float>::quiet_NaN());
  in.cache_v = in.cache_k;
  auto fill_row = [&](int64_t cache_row) {
    for (int64_t j = 0; j < W; ++j) {
      in.cache_k[cache_row * W + j] = round_to_bf16(dist(rng));
      in.cache_v[cache_row * W + j] = round_to_bf16(dist(rng));
    }
  };
  if (fill_whole_cache) {
    for (int64_t r = 0; r < c.num_slots * c.max_len; ++r) fill_row(r);
    return in;
  }
  for (const auto& s : c.seqs) {
    for (int64_t p = 0; p < s.past_len; ++p) fill_row(s.cache_slot * c.max_len + p);
  }
  return in;
}

// The fp32 reference attention (kernels/cpu/reference.h) of the case: out [num_rows, H, D], rows
// no sequence covers left at `unwritten`. The cache after the append goes to *cache_k and
// *cache_v when given.
inline std::vector<float> reference_attention(const AttentionCase& c, const AttentionInputs& in,
                                              float unwritten = 0.0f,
                                              std::vector<float>* cache_k = nullptr,
                                              std::vector<float>* cache_v = nullptr) {
  std::vector<float> ck(in.cache_k), cv(in.cache_v);
  std::vector<float> out(static_cast<size_t>(c.num_rows() * c.shape.num_heads * c.shape.head_dim),
                         unwritten);
  kernels::cpu::reference::attention(in.q.data(), in.k.data(), in.v.data(), c.seqs.data(),
                                     static_cast<int64_t>(c.seqs.size()), c.shape,
                                     {ck.data(), cv.data(), c.num_slots, c.max_len}, out.data());
  if (cache_k != nullptr) *cache_k = std::move(ck);
  if (cache_v != nullptr) *cache_v = std::move(cv);
  return out;
}

// One query row's state in the serial form of attend_tile.
struct EmulatedRow {
  float m = -INFINITY;
  float l = 0.0f;
  std::vector<float> o;
  explicit EmulatedRow(int64_t head_dim) : o(static_cast<size_t>(head_dim), 0.0f) {}
};

// attend_tile for one row at position pos, serially: keys [kb, kb + nk) (nk <= one tile) of a
// cache read through key(j, d) and value(j, d), j the key's position. Same scores, masking and
// online-softmax step as the kernel; sums in lane order instead of the warp's butterfly.
template <class Key, class Value>
void emulate_attend_tile(const float* q_row, int64_t D, int64_t kb, int64_t nk, int64_t pos,
                         float scale, Key key, Value value, EmulatedRow& row) {
  using namespace kernels::cuda;
  float s[kAttnKeyTile];
  float tile_max = -INFINITY;
  for (int64_t j = 0; j < kAttnKeyTile; ++j) {
    s[j] = -INFINITY;
    if (j < nk && attn_key_visible(kb + j, pos)) {
      float dot = 0.0f;
      for (int64_t d = 0; d < D; ++d) dot += q_row[d] * key(kb + j, d);
      s[j] = dot * scale;
    }
    tile_max = std::max(tile_max, s[j]);
  }
  if (tile_max == -INFINITY) return;
  const SoftmaxTileStep st = softmax_tile_step(row.m, tile_max);
  float sum = 0.0f;
  for (float x : s) sum += softmax_weight(x, st.m_new);
  row.l = row.l * st.corr + sum;
  for (float& x : row.o) x *= st.corr;
  for (int64_t j = 0; j < nk; ++j) {
    const float p = softmax_weight(s[j], st.m_new);
    for (int64_t d = 0; d < D; ++d) row.o[d] += p * value(kb + j, d);
  }
  row.m = st.m_new;
}

// The row's partial (o, m, l) at `slot` of head h, as store_partial writes it.
inline void store_emulated_partial(const EmulatedRow& row, int64_t slot, int64_t H, int64_t h,
                                   std::vector<float>& partial_o, std::vector<float>& partial_ml) {
  const int64_t D = static_cast<int64_t>(row.o.size());
  std::copy(row.o.begin(), row.o.end(), partial_o.begin() + (slot * H + h) * D);
  partial_ml[(slot * H + h) * 2] = row.m;
  partial_ml[(slot * H + h) * 2 + 1] = row.l;
}

// combine_splits for one (row, head): n splits at slots slot0.. into dst (D floats).
inline void emulate_combine_splits(const std::vector<float>& partial_o,
                                   const std::vector<float>& partial_ml, int64_t slot0, int64_t n,
                                   int64_t H, int64_t h, int64_t D, float* dst) {
  using namespace kernels::cuda;
  const MergedSplits merged = merge_splits(partial_ml.data(), slot0, n, H, h);
  for (int64_t d = 0; d < D; ++d) {
    dst[d] = merged_output(partial_o.data(), partial_ml.data(), slot0, n, H, h, D, d, merged);
  }
}

}  // namespace moe::test
