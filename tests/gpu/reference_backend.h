// A host-memory Backend over the naive reference ops (kernels/cpu/reference.h), for the GPU test
// binary of the minimal device build (tools/device/standalone), which has no BLAS and so no CPU
// backend. Memory, the MoE layout and the combine come from HostBackend, as for the CPU backend.
#pragma once

#include <memory>

#include "kernels/cpu/reference.h"
#include "kernels/host_backend.h"

namespace moe::kernels::test {

class ReferenceBackend : public HostBackend {
 public:
  explicit ReferenceBackend(BackendTraits traits = {"reference"})
      : HostBackend(std::move(traits)) {}

  void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
                 float* out) override {
    cpu::reference::embedding(table, vocab, hidden, ids, n, out);
  }
  void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y,
              const bf16* /*x_bf16*/) override {
    cpu::reference::linear(x, w, rows, in, out, y);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionBatch& batch,
                 AttentionShape shape, KvCacheView cache, float* out) override {
    cpu::reference::attention(q, k, v, batch.seqs, batch.num_seqs, shape, cache, out);
  }
  void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                   int32_t* ids, float* weights) override {
    cpu::reference::router_topk(logits, rows, experts, k, renormalise, ids, weights);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    cpu::reference::swiglu_mlp(x, w, rows, hidden, inter, y);
  }
  void add_inplace(float* x, const float* y, int64_t n) override {
    cpu::reference::add_inplace(x, y, n);
  }
  void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                   float* dst) override {
    cpu::reference::gather_rows(src, width, idx, n, dst);
  }

 protected:
  void norm_rows(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                 float* y) override {
    cpu::reference::rmsnorm(x, w, rows, dim, eps, y);
  }
  void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
            double theta) override {
    cpu::reference::rope(x, positions, rows, heads, head_dim, theta);
  }
  // fp32 compute: x_bf16 and out_bf16 are never given (HostBackend::expert_swiglu checks).
  void grouped_swiglu(const float* x, const bf16* /*x_bf16*/, int64_t hidden, int64_t inter,
                      const ExpertGroup* groups, int64_t num_groups, const int32_t* row_index,
                      float* out, bf16* /*out_bf16*/) override {
    cpu::reference::grouped_expert_swiglu(x, hidden, inter, groups, num_groups, row_index, out);
  }
};

}  // namespace moe::kernels::test
