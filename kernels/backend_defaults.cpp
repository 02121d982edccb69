// Backend's default ops: what a backend in host memory does for the ops that have one (the
// resident ops run on host pointers, the fused ops compose the basic ones in the model's order,
// so the CPU backend is unchanged). Kept apart from the factory (backend.cpp) so that builds of
// the CUDA kernels alone (tools/device/standalone) link without the CPU backend.
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/check.h"

namespace moe::kernels {

namespace {

void require_host_memory(const Backend& b, const char* op) {
  MOE_CHECK(b.is_host_memory(),
            "backend {} keeps tensors in device memory but does not implement {}", b.name(), op);
}

}  // namespace

void Backend::attention_resident(const float* q, const float* k, const float* v,
                                 const AttentionSeq* seqs, int64_t num_seqs, int64_t /*num_rows*/,
                                 AttentionShape shape, KvCacheView cache, float* out) {
  require_host_memory(*this, "attention_resident");
  attention(q, k, v, seqs, num_seqs, shape, cache, out);
}

void Backend::begin_capture() {
  MOE_THROW("backend", "backend {} has no device graphs", name());
}
int64_t Backend::end_capture() {
  MOE_THROW("backend", "backend {} has no device graphs", name());
}
void Backend::launch_graph(int64_t /*handle*/) {
  MOE_THROW("backend", "backend {} has no device graphs", name());
}

void Backend::embedding_resident(const bf16* table, int64_t vocab, int64_t hidden,
                                 const int32_t* ids, int64_t n, float* out) {
  require_host_memory(*this, "embedding_resident");
  embedding(table, vocab, hidden, ids, n, out);
}

void Backend::router_topk_resident(const float* logits, int64_t rows, int64_t experts, int64_t k,
                                   bool renormalise, int32_t* ids, float* weights) {
  require_host_memory(*this, "router_topk_resident");
  router_topk(logits, rows, experts, k, renormalise, ids, weights);
}

void Backend::dispatch_layout_resident(const layout::SourceLayoutView& view) {
  require_host_memory(*this, "dispatch_layout_resident");
  layout::emulate(view);
}

void Backend::group_by_slot_resident(const layout::SlotGroupingView& view) {
  require_host_memory(*this, "group_by_slot_resident");
  layout::emulate(view);
}

void Backend::gather_rows_resident(const float* src, int64_t width, const int32_t* idx, int64_t n,
                                   float* dst) {
  require_host_memory(*this, "gather_rows_resident");
  gather_rows(src, width, idx, n, dst);
}

void Backend::combine_partial_resident(const RouteEntry* routes, const int32_t* pair_of_entry,
                                       const float* expert_out, int64_t width, int32_t top_k,
                                       int32_t num_rows, int32_t own_begin, int32_t own_rows,
                                       float* partial) {
  require_host_memory(*this, "combine_partial_resident");
  for (int32_t r = 0; r < num_rows; ++r) {
    float* out = partial + layout::own_last_row(r, own_begin, own_rows, num_rows) * width;
    for (int64_t c = 0; c < width; ++c) {
      out[c] = layout::partial_element(routes, pair_of_entry, expert_out, width, top_k, r, c);
    }
  }
}

void Backend::combine_residual_resident(const layout::CombineSources& src,
                                        const int32_t* token_offsets, const int32_t* token_rows,
                                        int64_t width, int32_t num_tokens, float* x) {
  require_host_memory(*this, "combine_residual_resident");
  for (int32_t t = 0; t < num_tokens; ++t) {
    float* row = x + t * width;
    for (int64_t c = 0; c < width; ++c) {
      row[c] =
          layout::combine_residual_element(src, token_offsets, token_rows, width, t, c, row[c]);
    }
  }
}

void Backend::expert_swiglu_resident(const float* x, int64_t hidden, int64_t inter,
                                     const ResidentExpertBatch& batch, float* out) {
  require_host_memory(*this, "expert_swiglu_resident");
  std::vector<ExpertGroup> groups;
  std::vector<int32_t> rows;
  for (int64_t s = 0; s < batch.num_slots; ++s) {
    const int64_t begin = batch.slot_begin[s], end = batch.slot_begin[s + 1];
    MOE_CHECK(begin >= 0 && end >= begin && end <= batch.max_pairs,
              "expert_swiglu_resident: slot {} covers pairs [{}, {}) of {}", s, begin, end,
              batch.max_pairs);
    if (end > begin) groups.push_back({batch.host_slot_weights[s], begin, end - begin});
  }
  if (groups.empty()) return;
  grouped_expert_swiglu(x, hidden, inter, groups.data(), static_cast<int64_t>(groups.size()),
                        batch.row_index, out);
}

void Backend::rmsnorm_rounded(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                              float* y, bf16* y_bf16) {
  rmsnorm(x, w, rows, dim, eps, y);
  if (y_bf16 == nullptr) return;
  MOE_CHECK(is_host_memory(), "backend {} asks for bf16 activations but rounds none", name());
  for (int64_t i = 0; i < rows * dim; ++i) y_bf16[i] = float_to_bf16(y[i]);
}

void Backend::linear_rounded(const float* x, const bf16* /*x_bf16*/, const bf16* w, int64_t rows,
                             int64_t in, int64_t out, float* y) {
  linear(x, w, rows, in, out, y);
}

void Backend::qkv_projection(const float* x, const bf16* /*x_bf16*/, const bf16* w_qkv,
                             int64_t rows, int64_t hidden, int64_t q_width, int64_t kv_width,
                             float* q, float* k, float* v) {
  linear(x, w_qkv, rows, hidden, q_width, q);
  linear(x, w_qkv + q_width * hidden, rows, hidden, kv_width, k);
  linear(x, w_qkv + (q_width + kv_width) * hidden, rows, hidden, kv_width, v);
}

void Backend::qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                           const int32_t* positions, int64_t rows, int64_t heads, int64_t kv_heads,
                           int64_t head_dim, float eps, double theta) {
  MOE_CHECK(is_host_memory(),
            "backend {} keeps positions in device memory but does not implement qk_norm_rope",
            name());
  rmsnorm(q, q_norm_w, rows * heads, head_dim, eps, q);
  rmsnorm(k, k_norm_w, rows * kv_heads, head_dim, eps, k);
  rope(q, positions, rows, heads, head_dim, theta);
  rope(k, positions, rows, kv_heads, head_dim, theta);
}

void Backend::add_rmsnorm(float* x, const float* delta, const bf16* w, int64_t rows, int64_t dim,
                          float eps, float* y, bf16* y_bf16) {
  add_inplace(x, delta, rows * dim);
  rmsnorm_rounded(x, w, rows, dim, eps, y, y_bf16);
}

}  // namespace moe::kernels
