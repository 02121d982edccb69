// Backend ops called with their metadata in host arrays, as tests and benchmarks hold it: the
// metadata is copied into the backend's memory (a plain copy for host backends) and the op is
// called as the model calls it, with or without the host copies a device backend may use.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/expert_groups.h"

namespace moe::test {

// A host array copied into backend memory for the length of one call.
template <class T>
kernels::Buffer<T> in_backend(kernels::Backend& be, const T* host, int64_t n) {
  kernels::Buffer<T> b;
  b.assign(be, host, static_cast<size_t>(std::max<int64_t>(n, 0)));
  return b;
}

// out (or out_bf16) = the grouped SwiGLU of `groups` (x or x_bf16, out or out_bf16 in be's
// memory; groups and row_index on the host; kernels/expert_groups.h says how groups must lie).
inline void grouped_swiglu(kernels::Backend& be, const float* x, int64_t hidden, int64_t inter,
                           const kernels::ExpertGroup* groups, int64_t num_groups,
                           const int32_t* row_index, float* out, bool host_counts = true,
                           const bf16* x_bf16 = nullptr, bf16* out_bf16 = nullptr) {
  const kernels::HostExpertGroups experts(be, groups, num_groups, row_index, host_counts);
  be.expert_swiglu(x, hidden, inter, experts.batch(), out, x_bf16, out_bf16);
}

// attention() over sequences held on the host (q, k, v, cache, out in be's memory). host_seqs:
// pass the host copy, as an eager step does; false: as a captured decode step runs it.
inline void attention(kernels::Backend& be, const float* q, const float* k, const float* v,
                      const kernels::AttentionSeq* seqs, int64_t num_seqs,
                      kernels::AttentionShape shape, kernels::KvCacheView cache, float* out,
                      bool host_seqs = true) {
  int64_t rows = 0;
  for (int64_t s = 0; s < num_seqs; ++s) rows = std::max(rows, seqs[s].row_begin + seqs[s].num_new);
  const auto d_seqs = in_backend(be, seqs, num_seqs);
  be.attention(q, k, v, {d_seqs.data(), host_seqs ? seqs : nullptr, num_seqs, rows}, shape, cache,
               out);
}

// qk_norm_rope with positions held on the host.
inline void qk_norm_rope(kernels::Backend& be, float* q, float* k, const bf16* q_norm_w,
                         const bf16* k_norm_w, const int32_t* positions, int64_t rows,
                         int64_t heads, int64_t kv_heads, int64_t head_dim, float eps,
                         double theta) {
  const auto d_pos = in_backend(be, positions, rows);
  be.qk_norm_rope(q, k, q_norm_w, k_norm_w, d_pos.data(), rows, heads, kv_heads, head_dim, eps,
                  theta);
}

// gather_rows with the row indices held on the host.
inline void gather_rows(kernels::Backend& be, const float* src, int64_t width, const int32_t* idx,
                        int64_t n, float* dst) {
  const auto d_idx = in_backend(be, idx, n);
  be.gather_rows(src, width, d_idx.data(), n, dst);
}

}  // namespace moe::test
