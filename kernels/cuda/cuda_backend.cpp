// CudaBackendImpl: the Backend ops on one device and one stream. Host code only (kernels are
// reached through api.cuh). Invariants: everything is enqueued on stream_, so the single device
// staging buffer (meta_) and scratch buffer (scratch_) are reused in stream order; a pinned
// staging slot is rewritten only after the event recorded behind its last copy has completed;
// a buffer that grows first waits for the stream (in-flight kernels may still read the old one).
// Numerics: bf16 compute, rounding exactly where kernels/common/rounding.h says (asserted below);
// e4m3 weights go through cuda::Fp8Gemm (fp8_gemm.h).
// MOE_EP_CUDA_SYNC=1 synchronises and checks after every op, so an asynchronous fault is reported
// under the op that caused it rather than at the next synchronisation.
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/common/rounding.h"
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/attention_plan.h"
#include "kernels/cuda/attention_tc_plan.h"
#include "kernels/cuda/cuda_raii.h"
#include "kernels/cuda/event_phase_timer.h"
#include "kernels/cuda/fp8_gemm.h"
#include "kernels/cuda/fused_math.h"
#include "kernels/cuda/grouped_gemm_plan.h"
#include "kernels/cuda/moe_layout_launch.h"
#include "kernels/cuda/staging.h"

namespace moe::kernels {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error for later callers
    return 0;
  }
  return n;
}

namespace {

using cuda::DeviceBytes;
using cuda::StagingLayout;

// Carves sub-buffers out of one scratch reservation; offsets 256-byte aligned.
class ScratchCarver {
 public:
  size_t add(size_t size_bytes) {
    const size_t at = cuda::align_up(total_, 256);
    total_ = at + size_bytes;
    return at;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

class CudaBackendImpl final : public CudaBackend, public DeviceGraphs {
 public:
  explicit CudaBackendImpl(int device) : device_(device) {
    MOE_CUDA_CHECK(cudaSetDevice(device_));
    MOE_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_));
    stream_ = cuda::Stream::create_non_blocking();
    cublas_ = cuda::CublasHandle::create(stream_.get());
    // A workspace of our own, so cuBLAS never allocates while a graph is being captured.
    cublas_workspace_ = DeviceBytes(kCublasWorkspaceBytes);
    note_alloc(cublas_workspace_.size_bytes());
    MOE_CUBLAS_CHECK(
        cublasSetWorkspace(cublas_.get(), cublas_workspace_.get(), cublas_workspace_.size_bytes()));
    for (PinnedSlot& slot : pinned_) slot.consumed = cuda::Event::create();
    fp8_ = std::make_unique<cuda::Fp8Gemm>(
        device_, stream_.get(), cublas_.get(), cublas_workspace_.get(),
        cublas_workspace_.size_bytes(),
        [this](size_t size_bytes) { return ensure_device(fp8_scratch_, size_bytes); });
    const char* sync_env = std::getenv("MOE_EP_CUDA_SYNC");
    sync_each_op_ = sync_env != nullptr && std::strcmp(sync_env, "0") != 0 && *sync_env != '\0';
  }

  ~CudaBackendImpl() override {
    abort_capture();
    // Kernels may still read scratch/staging: let them finish before the buffers go.
    (void)cudaStreamSynchronize(stream_.get());
    release_all();
  }

  CUstream_st* stream() const override { return stream_.get(); }
  void* compute_stream() const override { return stream_.get(); }
  int device() const override { return device_; }
  int num_sms() const override { return num_sms_; }
  std::unique_ptr<PhaseTimer> make_phase_timer(int num_phases) override {
    return cuda::make_event_phase_timer(num_phases, stream_.get());
  }

  int64_t device_used_bytes() const override {
    size_t free_bytes = 0, total_bytes = 0;
    MOE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return static_cast<int64_t>(total_bytes - free_bytes);
  }
  size_t device_total_bytes() const override {
    size_t free_bytes = 0, total_bytes = 0;
    MOE_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return total_bytes;
  }
  size_t internal_bytes() const override {
    size_t bytes = meta_.size_bytes() + scratch_.size_bytes() + graph_scratch_.size_bytes() +
                   fp8_scratch_.size_bytes();
    for (const InvFreq& f : inv_freq_) bytes += f.buf.size_bytes();
    return bytes;
  }

  // ---- memory ----
  void* allocate(size_t size_bytes) override {
    void* p = nullptr;
    const cudaError_t rc = cudaMalloc(&p, size_bytes == 0 ? 1 : size_bytes);
    if (rc != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      (void)cudaMemGetInfo(&free_bytes, &total_bytes);
      MOE_THROW("memory", "cudaMalloc of {} bytes on device {} failed: {} ({} of {} bytes free)",
                size_bytes, device_, cudaGetErrorString(rc), free_bytes, total_bytes);
    }
    note_alloc(size_bytes);
    return p;
  }
  void deallocate(void* ptr, size_t size_bytes) noexcept override {
    if (ptr == nullptr) return;
    (void)cudaFree(ptr);  // implicitly waits for the device
    note_free(size_bytes);
  }
  // upload/download are synchronous: the caller may reuse or read its host memory on return.
  void upload(void* dst, const void* host_src, size_t size_bytes) override {
    if (size_bytes == 0) return;
    MOE_CUDA_CHECK(
        cudaMemcpyAsync(dst, host_src, size_bytes, cudaMemcpyHostToDevice, stream_.get()));
    wait_stream("upload");
  }
  void download(void* host_dst, const void* src, size_t size_bytes) override {
    if (size_bytes == 0) return;
    MOE_CUDA_CHECK(
        cudaMemcpyAsync(host_dst, src, size_bytes, cudaMemcpyDeviceToHost, stream_.get()));
    wait_stream("download");
  }
  void copy(void* dst, const void* src, size_t size_bytes) override {
    if (size_bytes == 0 || dst == src) return;
    MOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_bytes, cudaMemcpyDefault, stream_.get()));
    op_done("copy");
  }
  void fill_zero(void* dst, size_t size_bytes) override {
    if (size_bytes == 0) return;
    MOE_CUDA_CHECK(cudaMemsetAsync(dst, 0, size_bytes, stream_.get()));
    op_done("fill_zero");
  }
  void synchronize() override { wait_stream("synchronize"); }

  // ---- ops ----
  // ids in device memory, checked against vocab by the caller before they were uploaded.
  void embedding(const bf16* table, int64_t /*vocab*/, int64_t hidden, const int32_t* ids,
                 int64_t n, float* out) override {
    if (n <= 0) return;
    MOE_CUDA_CHECK(cuda::launch_embedding(table, hidden, ids, n, out, stream_.get()));
    op_done("embedding");
  }

  void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps, float* y,
               bf16* y_bf16) override {
    if (y_bf16 == nullptr) {
      MOE_CUDA_CHECK(cuda::launch_rmsnorm(x, w, rows, dim, eps, y, stream_.get()));
    } else {
      MOE_CUDA_CHECK(
          cuda::launch_norm_rows(nullptr, x, nullptr, w, rows, dim, eps, y, y_bf16, stream_.get()));
    }
    op_done("rmsnorm");
  }

  // x_bf16 (nullable) = bf16(x) as its producer wrote it: the GEMM reads it instead of
  // converting x again.
  void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y,
              const bf16* x_bf16) override {
    static_assert(rounding::kLinearInput && !rounding::kLinearOutput);  // bf16(x), fp32 y
    if (rows <= 0 || out <= 0) return;
    if (w.is_e4m3()) {
      fp8_->linear(w, x, x_bf16, rows, in, out, y);
      op_done("linear");
      return;
    }
    if (x_bf16 != nullptr) {
      gemm(w, x_bf16, rows, in, out, y);
      op_done("linear");
      return;
    }
    ScratchCarver carve;
    const size_t xb_at = carve.add(static_cast<size_t>(rows * in) * sizeof(bf16));
    unsigned char* s = scratch(carve.total());
    auto* xb = reinterpret_cast<bf16*>(s + xb_at);
    MOE_CUDA_CHECK(cuda::launch_f32_to_bf16(x, rows * in, xb, stream_.get()));
    gemm(w, xb, rows, in, out, y);
    op_done("linear");
  }

  // With the host's copy of the sequences: planned launches (split-K CUDA-core kernel, tensor-core
  // kernel for long new runs). Without: the graph-safe kernels sized by (rows, shape, max_len).
  void attention(const float* q, const float* k, const float* v, const AttentionBatch& batch,
                 AttentionShape shape, KvCacheView cache, float* out) override {
    if (batch.host_seqs == nullptr) {
      attention_graph_safe(q, k, v, batch, shape, cache, out);
    } else {
      attention_planned(q, k, v, batch.host_seqs, batch.num_seqs, shape, cache, out);
    }
  }

 private:
  void attention_planned(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                         int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) {
    static_assert(rounding::kKvCacheAppend);  // launch_kv_append stores bf16(k), bf16(v)
    MOE_CHECK(cache.dtype == KvDtype::kBF16, "attention: the CUDA backend needs a bf16 KV cache");
    // Sequences with >= kAttnTcMinNewTokens new tokens run on the tensor-core kernel (head_dim
    // 128, 16-byte aligned cache); the rest on the split-K CUDA-core kernel. plan.append covers
    // both and runs first.
    const bool tc_usable = shape.head_dim == cuda::kTcHeadDim &&
                           reinterpret_cast<uintptr_t>(cache.k) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(cache.v) % 16 == 0;
    const cuda::AttentionPlan& plan = attention_plan(seqs, num_seqs, shape, cache, tc_usable);
    const std::vector<cuda::AttentionTcItem>& tc_items = tc_plan_.items;
    if (plan.items.empty() && tc_items.empty()) return;
    StagingLayout layout;
    const size_t append_at = layout.add_array(plan.append.data(), plan.append.size());
    const size_t items_at = layout.add_array(plan.items.data(), plan.items.size());
    const size_t combine_at = layout.add_array(plan.combine.data(), plan.combine.size());
    const size_t tc_items_at = layout.add_array(tc_items.data(), tc_items.size());
    unsigned char* meta = stage(layout);

    const int64_t H = shape.num_heads, D = shape.head_dim;
    ScratchCarver carve;
    const size_t po_at = carve.add(static_cast<size_t>(plan.num_partial_slots * H * D) * 4);
    const size_t ml_at = carve.add(static_cast<size_t>(plan.num_partial_slots * H * 2) * 4);
    unsigned char* s = scratch(carve.total());
    auto* partial_o = reinterpret_cast<float*>(s + po_at);
    auto* partial_ml = reinterpret_cast<float*>(s + ml_at);

    MOE_CUDA_CHECK(cuda::launch_kv_append(
        k, v, shape.num_kv_heads * D, reinterpret_cast<const cuda::KvAppendRow*>(meta + append_at),
        static_cast<int64_t>(plan.append.size()), static_cast<bf16*>(cache.k),
        static_cast<bf16*>(cache.v), stream_.get()));
    MOE_CUDA_CHECK(cuda::launch_attention(
        q, static_cast<const bf16*>(cache.k), static_cast<const bf16*>(cache.v), shape,
        reinterpret_cast<const cuda::AttentionWorkItem*>(meta + items_at),
        static_cast<int64_t>(plan.items.size()), out, partial_o, partial_ml, stream_.get()));
    MOE_CUDA_CHECK(cuda::launch_attention_combine(
        reinterpret_cast<const cuda::AttentionCombineRow*>(meta + combine_at),
        static_cast<int64_t>(plan.combine.size()), shape, partial_o, partial_ml, out,
        stream_.get()));
    MOE_CUDA_CHECK(cuda::launch_attention_tc(
        q, static_cast<const bf16*>(cache.k), static_cast<const bf16*>(cache.v), shape,
        reinterpret_cast<const cuda::AttentionTcItem*>(meta + tc_items_at),
        static_cast<int64_t>(tc_items.size()), out, stream_.get()));
    op_done("attention");
  }

  // Graph-safe: no staging, no host read of seqs; the grids depend on (num_rows, shape,
  // cache.max_len, num_sms) only. Its partials live in their own buffer (no other op moves it),
  // which grows (with a stream synchronisation, not allowed while capturing) only when a call
  // needs more than every call before it: run one call of the largest batch before capturing.
  void attention_graph_safe(const float* q, const float* k, const float* v,
                            const AttentionBatch& batch, AttentionShape shape, KvCacheView cache,
                            float* out) {
    static_assert(rounding::kKvCacheAppend);  // launch_kv_append_fixed_grid stores bf16(k), bf16(v)
    MOE_CHECK(cache.dtype == KvDtype::kBF16, "attention: the CUDA backend needs a bf16 KV cache");
    const AttentionSeq* seqs = batch.seqs;
    const int64_t num_seqs = batch.num_seqs, num_rows = batch.num_rows;
    const int64_t H = shape.num_heads, KV = shape.num_kv_heads, D = shape.head_dim;
    MOE_CHECK(H > 0 && KV > 0 && D > 0 && H % KV == 0 && D <= cuda::kFixedMaxHeadDim,
              "attention: bad shape (heads {}, kv heads {}, head_dim {} <= {})", H, KV, D,
              cuda::kFixedMaxHeadDim);
    MOE_CHECK(num_seqs >= 0 && num_rows >= 0 && cache.max_len > 0,
              "attention: num_seqs {} num_rows {} max_len {}", num_seqs, num_rows, cache.max_len);
    if (num_rows == 0) return;
    const int64_t head_blocks =
        (H / KV + cuda::kFixedHeadsPerBlock - 1) / cuda::kFixedHeadsPerBlock;
    const cuda::FixedGridSplits splits =
        cuda::fixed_grid_splits(num_rows, KV * head_blocks, cache.max_len, num_sms_);
    const int64_t slots = num_rows * splits.num_splits;
    ScratchCarver carve;
    const size_t po_at = carve.add(static_cast<size_t>(slots * H * D) * 4);
    const size_t ml_at = carve.add(static_cast<size_t>(slots * H * 2) * 4);
    auto* s = static_cast<unsigned char*>(ensure_device(graph_scratch_, carve.total()));
    MOE_CUDA_CHECK(cuda::launch_kv_append_fixed_grid(
        k, v, KV * D, seqs, num_seqs, num_rows, cache.num_slots, cache.max_len,
        static_cast<bf16*>(cache.k), static_cast<bf16*>(cache.v), stream_.get()));
    MOE_CUDA_CHECK(cuda::launch_attention_fixed_grid(
        q, static_cast<const bf16*>(cache.k), static_cast<const bf16*>(cache.v), shape, seqs,
        num_seqs, num_rows, cache.num_slots, cache.max_len, splits,
        reinterpret_cast<float*>(s + po_at), reinterpret_cast<float*>(s + ml_at), out,
        stream_.get()));
    op_done("attention");
  }

 public:
  void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                  float* y) override {
    // bf16(x); fp32 gate/up/down GEMM outputs; bf16(silu(gate) * up).
    static_assert(rounding::kDenseSwiglu.input && !rounding::kDenseSwiglu.gate_up &&
                  rounding::kDenseSwiglu.activation && !rounding::kDenseSwiglu.output);
    if (rows <= 0) return;
    ScratchCarver carve;
    const size_t xb_at = carve.add(static_cast<size_t>(rows * hidden) * sizeof(bf16));
    const size_t gate_at = carve.add(static_cast<size_t>(rows * inter) * sizeof(float));
    const size_t up_at = carve.add(static_cast<size_t>(rows * inter) * sizeof(float));
    const size_t act_at = carve.add(static_cast<size_t>(rows * inter) * sizeof(bf16));
    unsigned char* s = scratch(carve.total());
    auto* xb = reinterpret_cast<bf16*>(s + xb_at);
    auto* gate = reinterpret_cast<float*>(s + gate_at);
    auto* up = reinterpret_cast<float*>(s + up_at);
    auto* act = reinterpret_cast<bf16*>(s + act_at);
    MOE_CUDA_CHECK(cuda::launch_f32_to_bf16(x, rows * hidden, xb, stream_.get()));
    gemm(w.gate, xb, rows, hidden, inter, gate);
    gemm(w.up, xb, rows, hidden, inter, up);
    MOE_CUDA_CHECK(cuda::launch_silu_mul_to_bf16(gate, up, rows * inter, act, stream_.get()));
    gemm(w.down, act, rows, inter, hidden, y);
    op_done("swiglu_mlp");
  }

  // Small-batch kernels (expert_small.cu) when every slot has few rows or the counts are only on
  // the device; else the grouped cuBLAS path with the gather reading row_index on the device.
  // out_bf16 (bf16 compute, always here): the bf16 output rows stored as they are, not widened.
  void expert_swiglu(const float* x, int64_t hidden, int64_t inter, const ExpertBatch& batch,
                     float* out, const bf16* x_bf16, bf16* out_bf16) override {
    static_assert(rounding::kGroupedSwiglu.input && rounding::kGroupedSwiglu.gate_up &&
                  rounding::kGroupedSwiglu.activation && rounding::kGroupedSwiglu.output);
    if (batch.num_slots <= 0 || batch.max_pairs <= 0) return;
    MOE_CHECK(
        batch.row_index != nullptr && batch.slot_begin != nullptr && batch.slot_weights != nullptr,
        "expert_swiglu: row_index, slot_begin and slot_weights must be set");
    const void* rows = x_bf16 != nullptr ? static_cast<const void*>(x_bf16) : x;
    const bool small_ok = cuda::expert_small_shape_ok(hidden, inter) &&
                          reinterpret_cast<uintptr_t>(rows) % 16 == 0 && batch.max_pairs < INT_MAX;
    const int32_t* host_begin = batch.host_slot_begin;
    if (host_begin == nullptr && !small_ok) {  // only the grouped GEMM fits: fetch the counts
      slot_begin_host_.resize(static_cast<size_t>(batch.num_slots + 1));
      download(slot_begin_host_.data(), batch.slot_begin,
               slot_begin_host_.size() * sizeof(int32_t));
      host_begin = slot_begin_host_.data();
    }
    int64_t max_rows = 0, active = 0;
    if (host_begin != nullptr) {
      for (int64_t s = 0; s < batch.num_slots; ++s) {
        const int64_t count = host_begin[s + 1] - host_begin[s];
        MOE_CHECK(host_begin[s] >= 0 && count >= 0 && host_begin[s + 1] <= batch.max_pairs,
                  "expert_swiglu: slot {} covers pairs [{}, {}) of {}", s, host_begin[s],
                  host_begin[s + 1], batch.max_pairs);
        max_rows = std::max(max_rows, count);
        active += count > 0 ? 1 : 0;
      }
      if (active == 0) return;
    }
    if (small_ok && (host_begin == nullptr || max_rows <= cuda::kExpertSmallMaxRows)) {
      const int64_t grid_slots =
          host_begin != nullptr ? active : std::min(batch.num_slots, batch.max_pairs);
      MOE_CHECK(grid_slots <= 65535, "expert_swiglu: {} slots > 65535", grid_slots);
      const int rows_per_pass = cuda::expert_rows_per_pass(
          hidden, inter, host_begin != nullptr ? max_rows : batch.max_pairs);
      const int64_t pairs = host_begin != nullptr ? host_begin[batch.num_slots] : batch.max_pairs;
      auto* act =
          reinterpret_cast<bf16*>(scratch(static_cast<size_t>(pairs * inter) * sizeof(bf16)));
      MOE_CUDA_CHECK(cuda::launch_expert_swiglu_small(
          x, x_bf16, hidden, inter, batch.row_index, batch.slot_begin, batch.slot_weights,
          batch.num_slots, grid_slots, rows_per_pass, act, out, out_bf16, stream_.get()));
      op_done("expert_swiglu");
      return;
    }
    MOE_CHECK(batch.host_slot_weights != nullptr,
              "expert_swiglu: the grouped path needs host_slot_weights");
    std::vector<ExpertGroup> groups;
    for (int64_t s = 0; s < batch.num_slots; ++s) {
      const int64_t begin = host_begin[s], count = host_begin[s + 1] - begin;
      if (count > 0) groups.push_back({batch.host_slot_weights[s], begin, count});
    }
    // The plan's gather sources are pair indices (identity row index); the gather kernel maps
    // them through the device row_index.
    const int64_t pairs = host_begin[batch.num_slots];
    pair_identity_.resize(static_cast<size_t>(pairs));
    for (int64_t p = 0; p < pairs; ++p) pair_identity_[p] = static_cast<int32_t>(p);
    // e4m3 experts: up to kDequantGroups groups at a time, their weights dequantised to bf16.
    const int64_t step = has_e4m3(groups) ? kDequantGroups : static_cast<int64_t>(groups.size());
    for (int64_t g0 = 0; g0 < static_cast<int64_t>(groups.size()); g0 += step) {
      const int64_t n = std::min<int64_t>(step, static_cast<int64_t>(groups.size()) - g0);
      if (step == kDequantGroups) fp8_->dequantise_groups(groups.data() + g0, n, hidden, inter);
      const cuda::GroupedSwigluPlan plan =
          cuda::plan_grouped_swiglu(groups.data() + g0, n, pair_identity_.data(), hidden, inter);
      run_grouped(plan, x, x_bf16, batch.row_index, out, out_bf16);
    }
    op_done("expert_swiglu");
  }

  static bool has_e4m3(const std::vector<ExpertGroup>& groups) {
    for (const ExpertGroup& g : groups) {
      if (g.weights.gate.is_e4m3() || g.weights.up.is_e4m3() || g.weights.down.is_e4m3()) {
        return true;
      }
    }
    return false;
  }

  // The grouped cuBLAS SwiGLU of a plan (grouped_gemm_plan.h) whose gather sources are pairs p,
  // read as x[row_index[p]] or x_bf16[row_index[p]] (row_index in device memory); the down rows
  // scattered into out widened, or into out_bf16 as they are when it is given.
  void run_grouped(const cuda::GroupedSwigluPlan& plan, const float* x, const bf16* x_bf16,
                   const int32_t* row_index, float* out, bf16* out_bf16) {
    const int64_t hidden = plan.hidden;
    const int64_t G = plan.num_gemm_groups();
    if (G == 0) return;
    const int64_t Pc = plan.num_compact_rows;

    ScratchCarver carve;
    const size_t x_at = carve.add(static_cast<size_t>(plan.x_elems()) * sizeof(bf16));
    const size_t gate_at = carve.add(static_cast<size_t>(plan.inter_elems()) * sizeof(bf16));
    const size_t up_at = carve.add(static_cast<size_t>(plan.inter_elems()) * sizeof(bf16));
    const size_t act_at = carve.add(static_cast<size_t>(plan.inter_elems()) * sizeof(bf16));
    const size_t down_at = carve.add(static_cast<size_t>(plan.x_elems()) * sizeof(bf16));
    unsigned char* s = scratch(carve.total());
    cuda::GroupedScratch sc{s + x_at, s + gate_at, s + up_at, s + act_at, s + down_at};

    const std::array<cuda::GroupedGemmArgs, 3> args = {
        cuda::grouped_gemm_args(plan, cuda::Projection::kGate, sc),
        cuda::grouped_gemm_args(plan, cuda::Projection::kUp, sc),
        cuda::grouped_gemm_args(plan, cuda::Projection::kDown, sc)};
    StagingLayout layout;
    std::array<std::array<size_t, 3>, 3> ptr_at{};
    for (size_t p = 0; p < 3; ++p) {
      ptr_at[p][0] = layout.add_array(args[p].a.data(), G);
      ptr_at[p][1] = layout.add_array(args[p].b.data(), G);
      ptr_at[p][2] = layout.add_array(args[p].c.data(), G);
    }
    const size_t gather_at = layout.add_array(plan.gather_src.data(), Pc);
    const size_t scatter_at = layout.add_array(plan.scatter_dst.data(), Pc);
    unsigned char* meta = stage(layout);

    MOE_CUDA_CHECK(cuda::launch_gather_pairs_to_bf16(
        x, x_bf16, hidden, reinterpret_cast<const int32_t*>(meta + gather_at), row_index, Pc,
        static_cast<bf16*>(const_cast<void*>(sc.x)), stream_.get()));
    grouped_gemm(args[0], meta + ptr_at[0][0], meta + ptr_at[0][1], meta + ptr_at[0][2]);
    grouped_gemm(args[1], meta + ptr_at[1][0], meta + ptr_at[1][1], meta + ptr_at[1][2]);
    MOE_CUDA_CHECK(cuda::launch_silu_mul_bf16(static_cast<const bf16*>(sc.gate),
                                              static_cast<const bf16*>(sc.up), plan.inter_elems(),
                                              static_cast<bf16*>(sc.act), stream_.get()));
    grouped_gemm(args[2], meta + ptr_at[2][0], meta + ptr_at[2][1], meta + ptr_at[2][2]);
    MOE_CUDA_CHECK(cuda::launch_scatter_rows_from_bf16(
        static_cast<const bf16*>(sc.down), hidden,
        reinterpret_cast<const int32_t*>(meta + scatter_at), Pc, out, out_bf16, stream_.get()));
  }

  void add_inplace(float* x, const float* y, int64_t n) override {
    MOE_CUDA_CHECK(cuda::launch_add_inplace(x, y, n, stream_.get()));
    op_done("add_inplace");
  }

  void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                   float* dst) override {
    if (n <= 0) return;
    MOE_CUDA_CHECK(cuda::launch_gather_rows(src, width, idx, n, dst, stream_.get()));
    op_done("gather_rows");
  }

  // ---- fused ops of the attention block (fused.cu) ----
  void add_rmsnorm(float* x, const float* delta, const bf16* w, int64_t rows, int64_t dim,
                   float eps, float* y, bf16* y_bf16) override {
    MOE_CUDA_CHECK(
        cuda::launch_norm_rows(x, x, delta, w, rows, dim, eps, y, y_bf16, stream_.get()));
    op_done("add_rmsnorm");
  }

  // One GEMM of the stacked weights into a [rows, q + 2 kv] scratch, then one kernel that splits
  // it into q, k and v (each contiguous, as attention and the norms read them). Same bits as three
  // linear() calls: every output element is the same dot product over the same bf16 operands.
  // An e4m3 stack is one matrix only when both widths are multiples of 128 (split_qkv); else
  // three e4m3 GEMMs write q, k and v directly.
  void qkv_projection(const float* x, const bf16* x_bf16, WeightView w_qkv, int64_t rows,
                      int64_t hidden, int64_t q_width, int64_t kv_width, float* q, float* k,
                      float* v) override {
    static_assert(rounding::kLinearInput && !rounding::kLinearOutput);
    if (rows <= 0) return;
    if (w_qkv.is_e4m3() && (q_width % kFp8Block != 0 || kv_width % kFp8Block != 0)) {
      const QkvWeights w = split_qkv(w_qkv, hidden, q_width, kv_width);
      fp8_->linear(w.q, x, x_bf16, rows, hidden, q_width, q);
      fp8_->linear(w.k, x, x_bf16, rows, hidden, kv_width, k);
      fp8_->linear(w.v, x, x_bf16, rows, hidden, kv_width, v);
      op_done("qkv_projection");
      return;
    }
    const int64_t width = q_width + 2 * kv_width;
    ScratchCarver carve;
    const size_t xb_at =
        x_bf16 == nullptr ? carve.add(static_cast<size_t>(rows * hidden) * sizeof(bf16)) : 0;
    const size_t qkv_at = carve.add(static_cast<size_t>(rows * width) * sizeof(float));
    unsigned char* s = scratch(carve.total());
    const bf16* xb = x_bf16;
    if (xb == nullptr) {
      auto* conv = reinterpret_cast<bf16*>(s + xb_at);
      MOE_CUDA_CHECK(cuda::launch_f32_to_bf16(x, rows * hidden, conv, stream_.get()));
      xb = conv;
    }
    auto* qkv = reinterpret_cast<float*>(s + qkv_at);
    if (w_qkv.is_e4m3()) {
      fp8_->linear(w_qkv, x, xb, rows, hidden, width, qkv);
    } else {
      gemm(w_qkv, xb, rows, hidden, width, qkv);
    }
    MOE_CUDA_CHECK(cuda::launch_split_qkv(qkv, rows, q_width, kv_width, q, k, v, stream_.get()));
    op_done("qkv_projection");
  }

  // positions are device memory (the model uploads them once per step); inv_freq is cached per
  // (theta, head_dim). One kernel for head dims the fused kernel takes, else the separate
  // rmsnorm and rope kernels in the same order (norms, then ropes).
  void qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                    const int32_t* positions, int64_t rows, int64_t heads, int64_t kv_heads,
                    int64_t head_dim, float eps, double theta) override {
    if (rows <= 0) return;
    MOE_CHECK(head_dim > 0 && head_dim % 2 == 0,
              "qk_norm_rope: head_dim must be even and positive, got {}", head_dim);
    const float* inv = inv_freq(theta, head_dim);
    if (cuda::qk_fused_head_dim_ok(head_dim)) {
      MOE_CUDA_CHECK(cuda::launch_qk_norm_rope(q, k, q_norm_w, k_norm_w, positions, inv, rows,
                                               heads, kv_heads, head_dim, eps, stream_.get()));
    } else {
      MOE_CUDA_CHECK(
          cuda::launch_rmsnorm(q, q_norm_w, rows * heads, head_dim, eps, q, stream_.get()));
      MOE_CUDA_CHECK(
          cuda::launch_rmsnorm(k, k_norm_w, rows * kv_heads, head_dim, eps, k, stream_.get()));
      MOE_CUDA_CHECK(cuda::launch_rope(q, positions, inv, rows, heads, head_dim, stream_.get()));
      MOE_CUDA_CHECK(cuda::launch_rope(k, positions, inv, rows, kv_heads, head_dim, stream_.get()));
    }
    op_done("qk_norm_rope");
  }

  // ---- MoE layout (kernels/common/moe_layout.h; metadata stays in VRAM) ----
  void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                   int32_t* ids, float* weights) override {
    if (rows <= 0) return;
    MOE_CHECK(k >= 1 && k <= experts, "router_topk: top-k {} must be in [1, experts = {}]", k,
              experts);
    MOE_CHECK(experts <= cuda::kRouterMaxExperts,
              "router_topk: {} experts > {} supported by the CUDA router", experts,
              cuda::kRouterMaxExperts);
    MOE_CUDA_CHECK(cuda::launch_router_topk(logits, rows, experts, k, renormalise, ids, weights,
                                            stream_.get()));
    op_done("router_topk");
  }
  void dispatch_layout(const layout::SourceLayoutView& view) override {
    MOE_CUDA_CHECK(cuda::launch_source_layout(view, stream_.get()));
    op_done("dispatch_layout");
  }
  void group_by_slot(const layout::SlotGroupingView& view) override {
    MOE_CUDA_CHECK(cuda::launch_slot_grouping(view, stream_.get()));
    op_done("group_by_slot");
  }
  void pack_rows(const wire::PackView& view) override {
    MOE_CUDA_CHECK(cuda::launch_pack_rows(view, stream_.get()));
    op_done("pack_rows");
  }
  void receive_rows(const wire::ReceiveView& view) override {
    MOE_CUDA_CHECK(cuda::launch_receive_rows(view, stream_.get()));
    op_done("receive_rows");
  }
  void combine_partial(const layout::PartialRowsView& view) override {
    MOE_CUDA_CHECK(cuda::launch_combine_partial(view, stream_.get()));
    op_done("combine_partial");
  }
  void combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                        const int32_t* token_rows, int64_t width, int32_t num_tokens,
                        float* x) override {
    MOE_CUDA_CHECK(cuda::launch_combine_residual(src, token_offsets, token_rows, width, num_tokens,
                                                 x, stream_.get()));
    op_done("combine_residual");
  }

  // ---- device graphs (DeviceGraphs) ----
  int64_t memory_generation() const override { return generation_; }
  bool experts_capturable(int64_t hidden, int64_t inter) const override {
    return cuda::expert_small_shape_ok(hidden, inter);
  }
  void begin_capture() override {
    MOE_CHECK(!capturing_, "begin_capture: a capture is already open");
    MOE_CUDA_CHECK(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
  }
  int64_t end_capture() override {
    MOE_CHECK(capturing_, "end_capture without begin_capture");
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    MOE_CUDA_CHECK(cudaStreamEndCapture(stream_.get(), &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t rc = cudaGraphInstantiate(&exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    MOE_CHECK(rc == cudaSuccess, "cudaGraphInstantiate failed: {}", cudaGetErrorString(rc));
    graphs_.push_back(exec);
    return static_cast<int64_t>(graphs_.size()) - 1;
  }
  void abort_capture() noexcept override {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    (void)cudaStreamEndCapture(stream_.get(), &graph);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
  }
  void launch(int64_t handle) override {
    MOE_CHECK(handle >= 0 && handle < static_cast<int64_t>(graphs_.size()) &&
                  graphs_[static_cast<size_t>(handle)] != nullptr,
              "launch: no device graph {}", handle);
    MOE_CUDA_CHECK(cudaGraphLaunch(graphs_[static_cast<size_t>(handle)], stream_.get()));
    op_done("launch_graph");
  }
  void release(int64_t handle) noexcept override {
    if (handle < 0 || handle >= static_cast<int64_t>(graphs_.size())) return;
    cudaGraphExec_t& g = graphs_[static_cast<size_t>(handle)];
    // A replay may still run: the executable goes once the stream is past it.
    (void)cudaStreamSynchronize(stream_.get());
    if (g != nullptr) (void)cudaGraphExecDestroy(g);
    g = nullptr;
  }
  void release_all() noexcept override {
    (void)cudaStreamSynchronize(stream_.get());
    for (cudaGraphExec_t g : graphs_) {
      if (g != nullptr) (void)cudaGraphExecDestroy(g);
    }
    graphs_.clear();
  }

  // ---- CudaBackend extras ----
  void silu_mul(const float* gate, const float* up, int64_t n, float* out) override {
    MOE_CUDA_CHECK(cuda::launch_silu_mul(gate, up, n, out, stream_.get()));
    op_done("silu_mul");
  }
  void fill_random_bf16(bf16* dst, int64_t n, uint64_t seed, float scale) override {
    MOE_CUDA_CHECK(cuda::launch_fill_random_bf16(dst, n, seed, scale, stream_.get()));
    op_done("fill_random_bf16");
  }
  void fill_random_f32(float* dst, int64_t n, uint64_t seed, float scale) override {
    MOE_CUDA_CHECK(cuda::launch_fill_random_f32(dst, n, seed, scale, stream_.get()));
    op_done("fill_zero");
  }
  DeviceGraphs* graphs() override { return sync_each_op_ ? nullptr : this; }

 private:
  // Waits for the stream. An error here may come from any op enqueued since the last wait:
  // the message says so, unless MOE_EP_CUDA_SYNC has already checked every earlier op.
  void wait_stream(const char* where) {
    MOE_CHECK(!capturing_, "{} waits for the device while a device graph is being captured", where);
    const cudaError_t rc = cudaStreamSynchronize(stream_.get());
    if (rc == cudaSuccess) return;
    if (sync_each_op_) {
      MOE_THROW("cuda", "{} on device {} failed: {}", where, device_, cudaGetErrorString(rc));
    }
    MOE_THROW("cuda",
              "device {} reported '{}' at {}; the failing op may be any one enqueued since the "
              "last synchronisation (rerun with MOE_EP_CUDA_SYNC=1 to name it)",
              device_, cudaGetErrorString(rc), where);
  }

  // End of every op: with MOE_EP_CUDA_SYNC=1, waits for it and throws naming it if it failed
  // (launch error or fault while it ran).
  void op_done(const char* op) {
    if (!sync_each_op_) return;
    const cudaError_t launch = cudaGetLastError();
    const cudaError_t run = launch == cudaSuccess ? cudaStreamSynchronize(stream_.get()) : launch;
    if (run != cudaSuccess) {
      MOE_THROW("cuda", "op {} failed on device {}: {} (MOE_EP_CUDA_SYNC=1)", op, device_,
                cudaGetErrorString(run));
    }
  }

  struct PinnedSlot {
    cuda::PinnedBytes buf;
    cuda::Event consumed;  // recorded after the last copy out of buf
    bool used = false;
  };
  static constexpr size_t kPinnedSlots = 4;

  // Device inv_freq [head_dim / 2] for (theta, head_dim), computed once in fp32 exactly as HF
  // (and the CPU backend's rope) computes it, and kept for the backend's life.
  const float* inv_freq(double theta, int64_t head_dim) {
    for (const InvFreq& f : inv_freq_) {
      if (f.theta == theta && f.head_dim == head_dim) return static_cast<const float*>(f.buf.get());
    }
    const int64_t half = head_dim / 2;
    std::vector<float> host(static_cast<size_t>(half));
    const float base = static_cast<float>(theta);
    for (int64_t i = 0; i < half; ++i) {
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
      host[i] = 1.0f / std::pow(base, exponent);
    }
    InvFreq f{theta, head_dim, DeviceBytes(host.size() * sizeof(float))};
    note_alloc(f.buf.size_bytes());
    upload(f.buf.get(), host.data(), f.buf.size_bytes());
    inv_freq_.push_back(std::move(f));
    return static_cast<const float*>(inv_freq_.back().buf.get());
  }

  // Grows `buf` to at least size_bytes (accounted in allocated_bytes()).
  void* ensure_device(DeviceBytes& buf, size_t size_bytes) {
    if (size_bytes <= buf.size_bytes()) return buf.get();
    MOE_CHECK(!capturing_,
              "a backend buffer must grow to {} bytes while a device graph is being captured "
              "(the step is run once eagerly first so this should not happen)",
              size_bytes);
    ++generation_;
    const size_t capacity = cuda::grown_capacity(buf.size_bytes(), size_bytes);
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    note_free(buf.size_bytes());
    buf.reset();
    buf = DeviceBytes(capacity);
    note_alloc(capacity);
    return buf.get();
  }

  unsigned char* scratch(size_t size_bytes) {
    return static_cast<unsigned char*>(ensure_device(scratch_, size_bytes));
  }

  // Copies the layout's parts host -> pinned -> device (one async copy on stream_); returns the
  // device base the layout's offsets refer to, valid until the next stage() in stream order.
  unsigned char* stage(const StagingLayout& layout) {
    MOE_CHECK(!capturing_,
              "an op staged host metadata while a device graph was being captured (only ops "
              "with their metadata in device memory may be captured)");
    const size_t bytes = layout.size_bytes();
    if (bytes == 0) return static_cast<unsigned char*>(meta_.get());
    PinnedSlot& slot = pinned_[next_slot_];
    next_slot_ = (next_slot_ + 1) % kPinnedSlots;
    if (slot.used) MOE_CUDA_CHECK(cudaEventSynchronize(slot.consumed.get()));
    if (slot.buf.size_bytes() < bytes) {
      slot.buf = cuda::PinnedBytes(cuda::grown_capacity(slot.buf.size_bytes(), bytes));
    }
    layout.pack(slot.buf.get());
    void* dev = ensure_device(meta_, bytes);
    MOE_CUDA_CHECK(
        cudaMemcpyAsync(dev, slot.buf.get(), bytes, cudaMemcpyHostToDevice, stream_.get()));
    MOE_CUDA_CHECK(cudaEventRecord(slot.consumed.get(), stream_.get()));
    slot.used = true;
    return static_cast<unsigned char*>(dev);
  }

  // y [rows, out] (fp32) = xb . w^T, xb [rows, in] bf16 (rounding.h's GEMM input); w bf16 or
  // e4m3.
  void gemm(WeightView w, const bf16* xb, int64_t rows, int64_t in, int64_t out, float* y) {
    if (w.is_e4m3()) {
      fp8_->linear(w, nullptr, xb, rows, in, out, y);
    } else {
      cuda::gemm_bf16(cublas_.get(), w.bf16_data(), xb, rows, in, out, y, CUDA_R_32F);
    }
  }

  // One cublasGemmGroupedBatchedEx call for every expert group of one projection. bf16 in and
  // out (the only bf16 combination the grouped API offers), fp32 accumulation.
  void grouped_gemm(const cuda::GroupedGemmArgs& a, const unsigned char* a_ptrs,
                    const unsigned char* b_ptrs, const unsigned char* c_ptrs) {
    const int G = a.group_count();
    trans_a_.assign(static_cast<size_t>(G), CUBLAS_OP_T);
    trans_b_.assign(static_cast<size_t>(G), CUBLAS_OP_N);
    MOE_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
        cublas_.get(), trans_a_.data(), trans_b_.data(), a.m.data(), a.n.data(), a.k.data(),
        a.alpha.data(), reinterpret_cast<const void* const*>(a_ptrs), CUDA_R_16BF, a.lda.data(),
        reinterpret_cast<const void* const*>(b_ptrs), CUDA_R_16BF, a.ldb.data(), a.beta.data(),
        reinterpret_cast<void* const*>(const_cast<unsigned char*>(c_ptrs)), CUDA_R_16BF,
        a.ldc.data(), G, a.group_size.data(), CUBLAS_COMPUTE_32F));
  }

  // The model calls attention once per layer with the same batch: reuse the host plan.
  // Also fills tc_plan_ (the tensor-core sequences when tc_usable) and appends its KV rows to
  // the returned plan's append list.
  const cuda::AttentionPlan& attention_plan(const AttentionSeq* seqs, int64_t num_seqs,
                                            AttentionShape shape, KvCacheView cache,
                                            bool tc_usable) {
    const bool same = plan_valid_ && tc_usable == plan_tc_usable_ &&
                      num_seqs == static_cast<int64_t>(plan_seqs_.size()) &&
                      shape.num_heads == plan_shape_.num_heads &&
                      shape.num_kv_heads == plan_shape_.num_kv_heads &&
                      shape.head_dim == plan_shape_.head_dim && cache.num_slots == plan_slots_ &&
                      cache.max_len == plan_max_len_ &&
                      (num_seqs == 0 ||
                       std::memcmp(seqs, plan_seqs_.data(), sizeof(AttentionSeq) * num_seqs) == 0);
    if (!same) {
      plan_valid_ = false;
      std::vector<AttentionSeq> core, tc;
      for (int64_t i = 0; i < num_seqs; ++i) {
        (tc_usable && cuda::use_attention_tc(seqs[i], shape) ? tc : core).push_back(seqs[i]);
      }
      plan_ = cuda::plan_attention(core.data(), static_cast<int64_t>(core.size()), shape,
                                   cache.num_slots, cache.max_len, num_sms_);
      tc_plan_ = tc.empty() ? cuda::AttentionTcPlan{}
                            : cuda::plan_attention_tc(tc.data(), static_cast<int64_t>(tc.size()),
                                                      shape, cache.num_slots, cache.max_len);
      plan_.append.insert(plan_.append.end(), tc_plan_.append.begin(), tc_plan_.append.end());
      plan_tc_usable_ = tc_usable;
      plan_seqs_.assign(seqs, seqs + num_seqs);
      plan_shape_ = shape;
      plan_slots_ = cache.num_slots;
      plan_max_len_ = cache.max_len;
      plan_valid_ = true;
    }
    return plan_;
  }

  int device_ = 0;
  int num_sms_ = 1;
  bool sync_each_op_ = false;  // MOE_EP_CUDA_SYNC
  cuda::Stream stream_;        // destroyed last (declared first)
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // Hopper's recommendation
  DeviceBytes cublas_workspace_;  // outlives cublas_ (declared before it)
  cuda::CublasHandle cublas_;
  std::array<PinnedSlot, kPinnedSlots> pinned_;
  size_t next_slot_ = 0;
  DeviceBytes meta_;
  DeviceBytes scratch_;
  DeviceBytes graph_scratch_;  // graph-safe attention's partials only (captured pointers)
  DeviceBytes fp8_scratch_;    // cuda::Fp8Gemm's (never carved by others)
  // Expert groups whose e4m3 weights are dequantised at a time on the grouped path (scratch: this
  // many experts' three matrices in bf16, about 9 MB each for Qwen3-30B-A3B).
  static constexpr int64_t kDequantGroups = 16;
  std::unique_ptr<cuda::Fp8Gemm> fp8_;  // after stream_, cublas_ and the workspace
  struct InvFreq {
    double theta = 0;
    int64_t head_dim = 0;
    DeviceBytes buf;
  };
  std::vector<InvFreq> inv_freq_;
  std::vector<int32_t> slot_begin_host_, pair_identity_;
  std::vector<cublasOperation_t> trans_a_, trans_b_;
  bool capturing_ = false;
  int64_t generation_ = 0;  // ++ whenever scratch, staging or graph scratch moves
  std::vector<cudaGraphExec_t> graphs_;

  bool plan_valid_ = false;
  cuda::AttentionPlan plan_;
  cuda::AttentionTcPlan tc_plan_;
  bool plan_tc_usable_ = false;
  std::vector<AttentionSeq> plan_seqs_;
  AttentionShape plan_shape_;
  int64_t plan_slots_ = 0, plan_max_len_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int local_rank) {
  const int count = cuda_device_count();
  MOE_CHECK_AS("cuda", count > 0,
               "--backend cuda: no CUDA device is visible to this process (driver missing, no GPU, "
               "or CUDA_VISIBLE_DEVICES empty)");
  MOE_CHECK_AS("cuda", local_rank >= 0, "make_cuda_backend: local rank {} < 0", local_rank);
  return std::make_unique<CudaBackendImpl>(local_rank % count);
}

CudaBackend* as_cuda_backend(Backend* backend) {
  return dynamic_cast<CudaBackend*>(backend);
}

}  // namespace moe::kernels
