// A host-memory Backend over the naive reference ops (kernels/cpu/reference.h), for the GPU test
// binary of the minimal device build (tools/device/standalone), which has no BLAS and so no CPU
// backend. Same contracts as the CPU backend; weighted_row_sum is the obvious loop.
#pragma once

#include <cstdlib>
#include <cstring>
#include <memory>

#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "kernels/cpu/reference.h"

namespace moe::kernels::test {

class ReferenceBackend final : public Backend {
 public:
  std::string name() const override { return "reference"; }
  bool is_host_memory() const override { return true; }
  void* allocate(size_t size_bytes) override {
    void* p = std::malloc(size_bytes == 0 ? 1 : size_bytes);
    MOE_CHECK(p != nullptr, "reference backend: cannot allocate {} bytes", size_bytes);
    note_alloc(size_bytes);
    return p;
  }
  void deallocate(void* ptr, size_t size_bytes) noexcept override {
    std::free(ptr);
    note_free(size_bytes);
  }
  void upload(void* dst, const void* src, size_t n) override { copy(dst, src, n); }
  void download(void* dst, const void* src, size_t n) override { copy(dst, src, n); }
  void copy(void* dst, const void* src, size_t n) override {
    if (n > 0 && dst != src) std::memmove(dst, src, n);
  }
  void fill_zero(void* dst, size_t n) override {
    if (n > 0) std::memset(dst, 0, n);
  }
  void synchronize() override {}

  void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
                 float* out) override {
    cpu::reference::embedding(table, vocab, hidden, ids, n, out);
  }
  void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
               float* y) override {
    cpu::reference::rmsnorm(x, w, rows, dim, eps, y);
  }
  void linear(const float* x, const bf16* w, int64_t rows, int64_t in, int64_t out,
              float* y) override {
    cpu::reference::linear(x, w, rows, in, out, y);
  }
  void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
            double theta) override {
    cpu::reference::rope(x, positions, rows, heads, head_dim, theta);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                 int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) override {
    cpu::reference::attention(q, k, v, seqs, num_seqs, shape, cache, out);
  }
  void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                   int32_t* ids, float* weights) override {
    cpu::reference::router_topk(logits, rows, experts, k, renormalise, ids, weights);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    cpu::reference::swiglu_mlp(x, w, rows, hidden, inter, y);
  }
  void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                             const ExpertGroup* groups, int64_t num_groups,
                             const int32_t* row_index, float* out) override {
    cpu::reference::grouped_expert_swiglu(x, hidden, inter, groups, num_groups, row_index, out);
  }
  void add_inplace(float* x, const float* y, int64_t n) override {
    cpu::reference::add_inplace(x, y, n);
  }
  void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                   float* dst) override {
    cpu::reference::gather_rows(src, width, idx, n, dst);
  }
  void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                        const float* weights, const int64_t* offsets, int64_t n,
                        float* dst) override {
    for (int64_t i = 0; i < n; ++i) {
      float* d = dst + i * width;
      for (int64_t c = 0; c < width; ++c) d[c] = 0.0f;
      for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j) {
        const float* s = src + static_cast<int64_t>(src_index[j]) * width;
        const float w = weights != nullptr ? weights[j] : 1.0f;
        for (int64_t c = 0; c < width; ++c) d[c] += w * s[c];
      }
    }
  }
};

}  // namespace moe::kernels::test
