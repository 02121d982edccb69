// Backend ops called with host arrays, as the tests of host-memory backends use them: expert
// groups given as an ExpertBatch (the form the op takes), attention over host sequences.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/check.h"

namespace moe::test {

// out = the grouped SwiGLU of `groups`, which must tile the pairs in order (group g covers
// [begin, begin + count), each beginning where the one before ends, the first at 0).
inline void grouped_swiglu(kernels::Backend& be, const float* x, int64_t hidden, int64_t inter,
                           const kernels::ExpertGroup* groups, int64_t num_groups,
                           const int32_t* row_index, float* out) {
  std::vector<int32_t> slot_begin{0};
  std::vector<kernels::ExpertWeights> weights;
  for (int64_t g = 0; g < num_groups; ++g) {
    MOE_CHECK(groups[g].begin == slot_begin.back(), "test groups must tile the pairs in order");
    slot_begin.push_back(static_cast<int32_t>(groups[g].begin + groups[g].count));
    weights.push_back(groups[g].weights);
  }
  kernels::ExpertBatch batch;
  batch.row_index = row_index;
  batch.slot_begin = slot_begin.data();
  batch.slot_weights = weights.data();
  batch.host_slot_weights = weights.data();
  batch.num_slots = num_groups;
  batch.max_pairs = slot_begin.back();
  batch.host_slot_begin = slot_begin.data();
  be.expert_swiglu(x, hidden, inter, batch, out);
}

// attention() over sequences in host memory (a host-memory backend's own memory).
inline void attention(kernels::Backend& be, const float* q, const float* k, const float* v,
                      const kernels::AttentionSeq* seqs, int64_t num_seqs,
                      kernels::AttentionShape shape, kernels::KvCacheView cache, float* out) {
  int64_t rows = 0;
  for (int64_t s = 0; s < num_seqs; ++s) rows = std::max(rows, seqs[s].row_begin + seqs[s].num_new);
  be.attention(q, k, v, {seqs, seqs, num_seqs, rows}, shape, cache, out);
}

}  // namespace moe::test
