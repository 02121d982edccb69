// CpuBackend forwards to kernels/cpu/ops.h; memory is 64-byte aligned host memory, tracked for
// the peak-memory report. CpuBf16Backend replaces the ops that round (rounding.h) with Bf16Ops.
#include "kernels/cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/common/check.h"
#include "kernels/cpu/bf16_ops.h"
#include "kernels/cpu/ops.h"

namespace moe::kernels {
namespace {

class CpuBackend : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  bool is_host_memory() const override { return true; }

  void* allocate(size_t size_bytes) override {
    size_t rounded = (size_bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    MOE_CHECK_AS("memory", p != nullptr, "cannot allocate {} bytes of host memory", size_bytes);
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
    cpu::embedding(table, vocab, hidden, ids, n, out);
  }
  void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
               float* y) override {
    cpu::rmsnorm(x, w, rows, dim, eps, y);
  }
  void linear(const float* x, const bf16* w, int64_t rows, int64_t in, int64_t out,
              float* y) override {
    cpu::linear(x, w, rows, in, out, y);
  }
  void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
            double theta) override {
    cpu::rope(x, positions, rows, heads, head_dim, theta);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                 int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) override {
    cpu::attention(q, k, v, seqs, num_seqs, shape, cache, out);
  }
  void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                   int32_t* ids, float* weights) override {
    cpu::router_topk(logits, rows, experts, k, renormalise, ids, weights);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    cpu::swiglu_mlp(x, w, rows, hidden, inter, y);
  }
  void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                             const ExpertGroup* groups, int64_t num_groups,
                             const int32_t* row_index, float* out) override {
    cpu::grouped_expert_swiglu(x, hidden, inter, groups, num_groups, row_index, out);
  }
  void add_inplace(float* x, const float* y, int64_t n) override { cpu::add_inplace(x, y, n); }
  void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                   float* dst) override {
    cpu::gather_rows(src, width, idx, n, dst);
  }
  void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                        const float* weights, const int64_t* offsets, int64_t n,
                        float* dst) override {
    cpu::weighted_row_sum(src, width, src_index, weights, offsets, n, dst);
  }
};

class CpuBf16Backend final : public CpuBackend {
 public:
  explicit CpuBf16Backend(bool force_fallback) : ops_(force_fallback) {}
  ComputeDtype compute_dtype() const override { return ComputeDtype::kBF16; }

  void linear(const float* x, const bf16* w, int64_t rows, int64_t in, int64_t out,
              float* y) override {
    ops_.linear(x, w, rows, in, out, y);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                 int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) override {
    ops_.attention(q, k, v, seqs, num_seqs, shape, cache, out);
  }
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    ops_.swiglu_mlp(x, w, rows, hidden, inter, y);
  }
  void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                             const ExpertGroup* groups, int64_t num_groups,
                             const int32_t* row_index, float* out) override {
    ops_.grouped_expert_swiglu(x, hidden, inter, groups, num_groups, row_index, out);
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
