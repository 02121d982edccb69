// CpuBackend: HostBackend over the fast CPU ops of kernels/cpu/ops.h (64-byte aligned host
// memory, tracked for the peak-memory report). CpuBf16Backend replaces the ops that round
// (rounding.h) with Bf16Ops.
#include "kernels/cpu/cpu_backend.h"

#include "kernels/common/check.h"
#include "kernels/cpu/bf16_ops.h"
#include "kernels/cpu/ops.h"
#include "kernels/host_backend.h"

namespace moe::kernels {
namespace {

BackendTraits cpu_traits(ComputeDtype compute_dtype) {
  BackendTraits t;
  t.name = backend_kind_name(BackendKind::kCpu);
  t.kv_dtype = kv_cache_dtype(BackendKind::kCpu);
  t.compute_dtype = compute_dtype;
  return t;
}

class CpuBackend : public HostBackend {
 public:
  explicit CpuBackend(ComputeDtype compute_dtype = ComputeDtype::kF32)
      : HostBackend(cpu_traits(compute_dtype)) {}

  void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
                 float* out) override {
    cpu::embedding(table, vocab, hidden, ids, n, out);
  }
  void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y,
              const bf16* /*x_bf16*/) override {
    cpu::linear(x, w, rows, in, out, y);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionBatch& batch,
                 AttentionShape shape, KvCacheView cache, float* out) override {
    cpu::attention(q, k, v, batch.seqs, batch.num_seqs, shape, cache, out);
  }
  void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                   int32_t* ids, float* weights) override {
    cpu::router_topk(logits, rows, experts, k, renormalise, ids, weights);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    cpu::swiglu_mlp(x, w, rows, hidden, inter, y);
  }
  void add_inplace(float* x, const float* y, int64_t n) override { cpu::add_inplace(x, y, n); }
  void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                   float* dst) override {
    cpu::gather_rows(src, width, idx, n, dst);
  }

 protected:
  void norm_rows(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                 float* y) override {
    cpu::rmsnorm(x, w, rows, dim, eps, y);
  }
  void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
            double theta) override {
    cpu::rope(x, positions, rows, heads, head_dim, theta);
  }
  // fp32 compute: x_bf16 and out_bf16 are never given (HostBackend::expert_swiglu checks).
  void grouped_swiglu(const float* x, const bf16* /*x_bf16*/, int64_t hidden, int64_t inter,
                      const ExpertGroup* groups, int64_t num_groups, const int32_t* row_index,
                      float* out, bf16* /*out_bf16*/) override {
    cpu::grouped_expert_swiglu(x, hidden, inter, groups, num_groups, row_index, out);
  }
};

class CpuBf16Backend final : public CpuBackend {
 public:
  explicit CpuBf16Backend(bool force_fallback)
      : CpuBackend(ComputeDtype::kBF16), ops_(force_fallback) {}

  void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y,
              const bf16* /*x_bf16*/) override {
    ops_.linear(x, w, rows, in, out, y);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionBatch& batch,
                 AttentionShape shape, KvCacheView cache, float* out) override {
    ops_.attention(q, k, v, batch.seqs, batch.num_seqs, shape, cache, out);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    ops_.swiglu_mlp(x, w, rows, hidden, inter, y);
  }

 protected:
  void grouped_swiglu(const float* x, const bf16* x_bf16, int64_t hidden, int64_t inter,
                      const ExpertGroup* groups, int64_t num_groups, const int32_t* row_index,
                      float* out, bf16* out_bf16) override {
    ops_.grouped_expert_swiglu(x, hidden, inter, groups, num_groups, row_index, out, x_bf16,
                               out_bf16);
  }

 private:
  cpu::Bf16Ops ops_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(ComputeDtype compute_dtype) {
  if (compute_dtype == ComputeDtype::kBF16) return std::make_unique<CpuBf16Backend>(false);
  return std::make_unique<CpuBackend>();
}

std::unique_ptr<Backend> make_cpu_bf16_fallback_backend() {
  return std::make_unique<CpuBf16Backend>(true);
}

}  // namespace moe::kernels
