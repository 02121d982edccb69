// Per-row arithmetic every attention kernel shares (attention.cu, attention_tc.cu), as
// __host__ __device__ bodies so tests/gpu_host emulates the kernels with these functions: the
// causal rule, one online-softmax step over a key tile, and the merge of a row's key splits.
// No host-only headers: nvcc compiles this file.
//
// Online softmax of one row, per key tile (fp32 m, l): scores s (masked keys -inf); tile max t;
// m_new = max(m, t); corr = exp(m - m_new) (0 for an empty state); p = exp(s - m_new);
// l = l * corr + sum p; o = o * corr + P V. A tile with no visible key changes nothing.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_math.h"

namespace moe::kernels::cuda {

// The causal rule by absolute position: a query at position pos sees cache position key iff
// key <= pos (its own key included).
MOE_HD bool attn_key_visible(int64_t key, int64_t pos) {
  return key <= pos;
}

struct SoftmaxTileStep {
  float m_new;
  float corr;  // factor on the running l and o
};

// A tile without a visible key (tile_max == -inf) leaves the state as it is: corr is 1, or 0 on
// an empty state, whose l and o are 0 anyway.
MOE_HD SoftmaxTileStep softmax_tile_step(float m_old, float tile_max) {
  SoftmaxTileStep st;
  st.m_new = m_old > tile_max ? m_old : tile_max;
  st.corr = softmax_rescale(m_old, st.m_new);
  return st;
}

// 1 / l, or 0 for a row that saw no key (l == 0): its output is 0.
MOE_HD float attn_inv_l(float l) {
  return l > 0.0f ? 1.0f / l : 0.0f;
}

// ---- merge of a row's key splits ----
// The splits of (row, head h) sit at consecutive partial slots [slot0, slot0 + n):
// partial_ml [slots, H, 2] holds (m, l), partial_o [slots, H, D] the unnormalised o. A split with
// l == 0 saw no key and contributes nothing.
struct MergedSplits {
  float m;      // largest m over the splits that saw a key
  float inv_l;  // 1 / merged l (0 when no split saw a key)
};

MOE_HD SoftmaxPartial split_partial(const float* partial_ml, int64_t slot, int64_t H, int64_t h) {
  const int64_t at = (slot * H + h) * 2;
  return SoftmaxPartial{partial_ml[at], partial_ml[at + 1]};
}

MOE_HD MergedSplits merge_splits(const float* partial_ml, int64_t slot0, int64_t n, int64_t H,
                                 int64_t h) {
  float m = -INFINITY;
  for (int64_t s = 0; s < n; ++s) {
    const SoftmaxPartial p = split_partial(partial_ml, slot0 + s, H, h);
    if (p.l > 0.0f && p.m > m) m = p.m;
  }
  float l = 0.0f;
  for (int64_t s = 0; s < n; ++s) {
    const SoftmaxPartial p = split_partial(partial_ml, slot0 + s, H, h);
    l += p.l * partial_scale(p, m);
  }
  return MergedSplits{m, attn_inv_l(l)};
}

// Output dim d of the merged row.
MOE_HD float merged_output(const float* partial_o, const float* partial_ml, int64_t slot0,
                           int64_t n, int64_t H, int64_t h, int64_t D, int64_t d,
                           MergedSplits merged) {
  float acc = 0.0f;
  for (int64_t s = 0; s < n; ++s) {
    const SoftmaxPartial p = split_partial(partial_ml, slot0 + s, H, h);
    acc += partial_o[((slot0 + s) * H + h) * D + d] * partial_scale(p, merged.m);
  }
  return acc * merged.inv_l;
}

}  // namespace moe::kernels::cuda
