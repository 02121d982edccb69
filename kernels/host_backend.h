// HostBackend: the base of every backend whose tensors live in this process's memory (the CPU
// backend, the tests' naive reference backends). It owns what those share: host memory, the MoE
// layout ops (the per-thread bodies of kernels/common/moe_layout.h run in loops, so the CPU runs
// the very code the CUDA kernels run), the combine (the bodies' arithmetic a whole row at a time,
// so that it vectorises; same bits, tested), the expert grouping, and the fused
// attention-block ops composed from the basic ones. A derived backend supplies the arithmetic.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace moe::kernels {

// The host combine's scratch, grown and kept: a token's running sum and a row's sum (width
// each), a row's terms (top_k each).
struct CombineScratch {
  std::vector<float> acc, sum;
  std::vector<const uint16_t*> rows;
  std::vector<float> weights;
};

class HostBackend : public Backend {
 public:
  explicit HostBackend(BackendTraits traits);

  void* allocate(size_t size_bytes) override;
  void deallocate(void* ptr, size_t size_bytes) noexcept override;
  void upload(void* dst, const void* host_src, size_t size_bytes) override;
  void download(void* host_dst, const void* src, size_t size_bytes) override;
  void copy(void* dst, const void* src, size_t size_bytes) override;
  void fill_zero(void* dst, size_t size_bytes) override;
  void synchronize() override {}

  // norm_rows(), then bf16(y) into y_bf16 when given.
  void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps, float* y,
               bf16* y_bf16) final;
  // linear() on each block of rows of w_qkv.
  void qkv_projection(const float* x, const bf16* x_bf16, WeightView w_qkv, int64_t rows,
                      int64_t hidden, int64_t q_width, int64_t kv_width, float* q, float* k,
                      float* v) final;
  // norm_rows(q), norm_rows(k), rope(q), rope(k).
  void qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                    const int32_t* positions, int64_t rows, int64_t heads, int64_t kv_heads,
                    int64_t head_dim, float eps, double theta) final;
  // add_inplace(), then rmsnorm().
  void add_rmsnorm(float* x, const float* delta, const bf16* w, int64_t rows, int64_t dim,
                   float eps, float* y, bf16* y_bf16) final;

  void dispatch_layout(const layout::SourceLayoutView& view) final;
  void group_by_slot(const layout::SlotGroupingView& view) final;
  void pack_rows(const wire::PackView& view) final;
  void receive_rows(const wire::ReceiveView& view) final;
  void combine_partial(const layout::PartialRowsView& view) final;
  void combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                        const int32_t* token_rows, int64_t width, int32_t num_tokens,
                        float* x) final;
  // One group per slot with pairs, then grouped_swiglu().
  void expert_swiglu(const float* x, int64_t hidden, int64_t inter, const ExpertBatch& batch,
                     float* out, const bf16* x_bf16, bf16* out_bf16) final;

 protected:
  // y [rows, dim] = x * rsqrt(mean(x^2) + eps) * w, per row. x and y may alias.
  virtual void norm_rows(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                         float* y) = 0;
  // Rotate-half RoPE in place on x [rows, heads, head_dim], row r at positions[r].
  virtual void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads,
                    int64_t head_dim, double theta) = 0;
  // For every group g and pair p in [g.begin, g.begin + g.count):
  //   out[p] = down_g(silu(gate_g(x[row_index[p]])) * up_g(x[row_index[p]])),
  // rows read from x_bf16 when it is given and written to out_bf16 instead of out when that is
  // given (both only to a backend computing in bf16: expert_swiglu checks).
  virtual void grouped_swiglu(const float* x, const bf16* x_bf16, int64_t hidden, int64_t inter,
                              const ExpertGroup* groups, int64_t num_groups,
                              const int32_t* row_index, float* out, bf16* out_bf16) = 0;

 private:
  std::vector<ExpertGroup> groups_;  // expert_swiglu's scratch
  CombineScratch combine_scratch_;
};

}  // namespace moe::kernels
