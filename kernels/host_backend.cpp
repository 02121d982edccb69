// HostBackend (host_backend.h). Kept apart from the CPU backend (kernels/cpu/) so that builds
// without BLAS (tools/device/standalone, whose GPU tests compare against the naive reference
// backend) link it.
#include "kernels/host_backend.h"

#include <cstdlib>
#include <cstring>

#include "kernels/common/check.h"

namespace moe::kernels {
namespace {

BackendTraits in_host_memory(BackendTraits traits) {
  traits.host_memory = true;
  traits.layout_chunk = layout::kHostLayoutChunk;
  return traits;
}

}  // namespace

HostBackend::HostBackend(BackendTraits traits) : Backend(in_host_memory(std::move(traits))) {}

void* HostBackend::allocate(size_t size_bytes) {
  const size_t rounded = (size_bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  MOE_CHECK_AS("memory", p != nullptr, "cannot allocate {} bytes of host memory", size_bytes);
  note_alloc(size_bytes);
  return p;
}

void HostBackend::deallocate(void* ptr, size_t size_bytes) noexcept {
  std::free(ptr);
  note_free(size_bytes);
}

void HostBackend::upload(void* dst, const void* host_src, size_t size_bytes) {
  copy(dst, host_src, size_bytes);
}

void HostBackend::download(void* host_dst, const void* src, size_t size_bytes) {
  copy(host_dst, src, size_bytes);
}

void HostBackend::copy(void* dst, const void* src, size_t size_bytes) {
  if (size_bytes > 0 && dst != src) std::memmove(dst, src, size_bytes);
}

void HostBackend::fill_zero(void* dst, size_t size_bytes) {
  if (size_bytes > 0) std::memset(dst, 0, size_bytes);
}

void HostBackend::rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                          float* y, bf16* y_bf16) {
  norm_rows(x, w, rows, dim, eps, y);
  if (y_bf16 == nullptr) return;
  for (int64_t i = 0; i < rows * dim; ++i) y_bf16[i] = float_to_bf16(y[i]);
}

void HostBackend::qkv_projection(const float* x, const bf16* x_bf16, WeightView w_qkv, int64_t rows,
                                 int64_t hidden, int64_t q_width, int64_t kv_width, float* q,
                                 float* k, float* v) {
  const QkvWeights w = split_qkv(w_qkv, hidden, q_width, kv_width);
  linear(x, w.q, rows, hidden, q_width, q, x_bf16);
  linear(x, w.k, rows, hidden, kv_width, k, x_bf16);
  linear(x, w.v, rows, hidden, kv_width, v, x_bf16);
}

void HostBackend::qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                               const int32_t* positions, int64_t rows, int64_t heads,
                               int64_t kv_heads, int64_t head_dim, float eps, double theta) {
  norm_rows(q, q_norm_w, rows * heads, head_dim, eps, q);
  norm_rows(k, k_norm_w, rows * kv_heads, head_dim, eps, k);
  rope(q, positions, rows, heads, head_dim, theta);
  rope(k, positions, rows, kv_heads, head_dim, theta);
}

void HostBackend::add_rmsnorm(float* x, const float* delta, const bf16* w, int64_t rows,
                              int64_t dim, float eps, float* y, bf16* y_bf16) {
  add_inplace(x, delta, rows * dim);
  rmsnorm(x, w, rows, dim, eps, y, y_bf16);
}

void HostBackend::dispatch_layout(const layout::SourceLayoutView& view) {
  layout::emulate(view);
}

void HostBackend::group_by_slot(const layout::SlotGroupingView& view) {
  layout::emulate(view);
}

void HostBackend::combine_partial(const RouteEntry* routes, const int32_t* pair_of_entry,
                                  const float* expert_out, int64_t width, int32_t top_k,
                                  int32_t num_rows, int32_t own_begin, int32_t own_rows,
                                  float* partial) {
  for (int32_t r = 0; r < num_rows; ++r) {
    float* out = partial + layout::own_last_row(r, own_begin, own_rows, num_rows) * width;
    layout::partial_span<layout::kHostCombineBlock>(routes, pair_of_entry, expert_out, width, top_k,
                                                    r, 0, width, out);
  }
}

void HostBackend::combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                                   const int32_t* token_rows, int64_t width, int32_t num_tokens,
                                   float* x) {
  for (int32_t t = 0; t < num_tokens; ++t) {
    layout::combine_residual_span<layout::kHostCombineBlock>(src, token_offsets, token_rows, width,
                                                             t, 0, width, x + t * width);
  }
}

void HostBackend::expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                                const ExpertBatch& batch, float* out) {
  groups_.clear();
  for (int64_t s = 0; s < batch.num_slots; ++s) {
    const int64_t begin = batch.slot_begin[s], end = batch.slot_begin[s + 1];
    MOE_CHECK(begin >= 0 && end >= begin && end <= batch.max_pairs,
              "expert_swiglu: slot {} covers pairs [{}, {}) of {}", s, begin, end, batch.max_pairs);
    if (end > begin) groups_.push_back({batch.slot_weights[s], begin, end - begin});
  }
  if (groups_.empty()) return;
  grouped_swiglu(x, hidden, inter, groups_.data(), static_cast<int64_t>(groups_.size()),
                 batch.row_index, out);
}

}  // namespace moe::kernels
