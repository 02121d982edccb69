// Backend factory: "cpu" always (fp32, or bf16 compute on request); "cuda" only in builds with
// the CUDA backend (bf16 compute only). Compute-dtype names are parsed here, once.
#include "kernels/backend.h"

#include <vector>

#include "kernels/common/check.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef MOE_EP_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moe::kernels {

const char* compute_dtype_name(ComputeDtype dtype) {
  return dtype == ComputeDtype::kBF16 ? "bf16" : "fp32";
}

ComputeDtype parse_compute_dtype(const std::string& text) {
  if (text == "fp32") return ComputeDtype::kF32;
  if (text == "bf16") return ComputeDtype::kBF16;
  MOE_THROW("config", "unknown compute dtype '{}' (expected fp32 or bf16)", text);
}

void Backend::expert_swiglu_resident(const float* x, int64_t hidden, int64_t inter,
                                      const ResidentExpertBatch& batch, float* out) {
  MOE_CHECK(is_host_memory(),
            "backend {} keeps metadata in device memory but does not implement "
            "expert_swiglu_resident",
            name());
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

void Backend::attention_resident(const float* q, const float* k, const float* v,
                                 const AttentionSeq* seqs, int64_t num_seqs, int64_t /*num_rows*/,
                                 AttentionShape shape, KvCacheView cache, float* out) {
  MOE_CHECK(is_host_memory(),
            "backend {} keeps tensors in device memory but does not implement attention_resident",
            name());
  attention(q, k, v, seqs, num_seqs, shape, cache, out);
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

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  if (options.name == "cpu") {
    return make_cpu_backend(options.compute_dtype.value_or(ComputeDtype::kF32));
  }
  if (options.name == "cuda") {
    MOE_CHECK_AS("config",
                 options.compute_dtype.value_or(ComputeDtype::kBF16) == ComputeDtype::kBF16,
                 "--backend cuda computes in bf16 only (its GEMMs take bf16 operands); drop "
                 "--compute-dtype fp32 or use --backend cpu");
#ifdef MOE_EP_HAVE_CUDA
    return make_cuda_backend(options.local_rank);
#else
    MOE_THROW("backend",
              "--backend cuda: this moe-ep was built without CUDA (configure with "
              "-DMOE_EP_CUDA=ON on a machine with nvcc)");
#endif
  }
  MOE_THROW("backend", "unknown backend '{}' (expected cpu or cuda)", options.name);
}

std::unique_ptr<Backend> make_backend(const std::string& name, int local_rank) {
  BackendOptions options;
  options.name = name;
  options.local_rank = local_rank;
  return make_backend(options);
}

}  // namespace moe::kernels
