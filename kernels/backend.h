// The compute backend the model is written against once: memory plus every op of the forward.
// Float tensors and weights live in backend memory (host for cpu, VRAM for cuda); integer
// metadata (ids, positions, row indices, offsets) is passed from host memory, see types.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "kernels/common/bf16.h"
#include "kernels/common/moe_layout.h"
#include "kernels/op_args.h"
#include "kernels/phase_timer.h"

namespace moe::kernels {

// Element type the GEMM operands are computed in. kF32: fp32 activations times bf16 weights
// (exact products), fp32 accumulation. kBF16: activations rounded to bf16 at the points stated
// in kernels/common/rounding.h, bf16 x bf16 products, fp32 accumulation.
enum class ComputeDtype : int32_t { kF32 = 0, kBF16 = 1 };
// "fp32" | "bf16".
const char* compute_dtype_name(ComputeDtype dtype);
// Parses "fp32" or "bf16"; anything else throws moe::Error (subsystem "config") naming both.
ComputeDtype parse_compute_dtype(const std::string& text);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual bool is_host_memory() const = 0;
  // Element type attention() expects of the KV cache it is given.
  virtual KvDtype kv_cache_dtype() const { return KvDtype::kF32; }
  // Element type of the GEMM operands (cpu: fp32 unless asked for bf16; cuda: always bf16).
  virtual ComputeDtype compute_dtype() const { return ComputeDtype::kF32; }

  // Memory. Bytes are spelled _bytes; allocate never returns null (throws).
  virtual void* allocate(size_t size_bytes) = 0;
  virtual void deallocate(void* ptr, size_t size_bytes) noexcept = 0;
  virtual void upload(void* dst, const void* host_src, size_t size_bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t size_bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t size_bytes) = 0;
  virtual void fill_zero(void* dst, size_t size_bytes) = 0;
  virtual void synchronize() = 0;
  size_t allocated_bytes() const { return allocated_bytes_; }
  // Bytes in use on the whole device this backend computes on (cudaMemGetInfo: every context
  // and process on it), or -1 for a backend in host memory.
  virtual int64_t device_used_bytes() const { return -1; }
  size_t peak_allocated_bytes() const { return peak_allocated_bytes_; }
  // The stream ops are enqueued on (a cudaStream_t for cuda), for a device communicator to
  // order its exchanges against; nullptr for host backends.
  virtual void* compute_stream() const { return nullptr; }
  // A timer on this backend's timeline (see phase_timer.h); host clock unless overridden.
  virtual std::unique_ptr<PhaseTimer> make_phase_timer(int num_phases) {
    return std::make_unique<HostPhaseTimer>(num_phases);
  }

  // Ops: same contracts as kernels/cpu/ops.h.
  virtual void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                         int64_t n, float* out) = 0;
  virtual void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                       float* y) = 0;
  virtual void linear(const float* x, const bf16* w, int64_t rows, int64_t in, int64_t out,
                      float* y) = 0;
  virtual void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads,
                    int64_t head_dim, double theta) = 0;
  virtual void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                         int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) = 0;
  // attention() with seqs [num_seqs] in BACKEND memory (device memory for cuda): the host knows
  // only num_seqs and num_rows (the total new rows: q/k/v/out have num_rows rows), not the
  // lengths, so a device backend sizes every launch by (num_rows, shape, cache.max_len) and a
  // decode step can be captured once as a CUDA graph and replayed with new lengths. Appends the
  // new k/v rows at the positions seqs gives. Host-memory backends: attention() itself.
  virtual void attention_resident(const float* q, const float* k, const float* v,
                                  const AttentionSeq* seqs, int64_t num_seqs, int64_t num_rows,
                                  AttentionShape shape, KvCacheView cache, float* out);
  // ids and weights are written to HOST memory: the dispatcher lays tokens out on the host.
  virtual void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k,
                           bool renormalise, int32_t* host_ids, float* host_weights) = 0;
  virtual void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden,
                          int64_t inter, float* y) = 0;
  virtual void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                                     const ExpertGroup* groups, int64_t num_groups,
                                     const int32_t* row_index, float* out) = 0;
  // ---- Device graphs: the ops enqueued between begin_capture() and end_capture() are recorded
  // (not run) into a graph that launch_graph() replays with the pointers and sizes it was
  // captured with; only ops whose metadata is in backend memory may be captured (a host staging
  // or a buffer that grows during capture throws). Backends without graphs: supports_graphs()
  // is false and the other calls must not be made.
  virtual bool supports_graphs() const { return false; }
  // Changes whenever the backend's own scratch moves (graphs captured before read freed memory).
  virtual int64_t memory_generation() const { return 0; }
  virtual void begin_capture();
  virtual int64_t end_capture();  // handle of the instantiated graph
  virtual void abort_capture() noexcept {}
  virtual void launch_graph(int64_t handle);
  virtual void drop_graphs() noexcept {}
  // embedding with ids in backend memory (checked against vocab by the caller).
  virtual void embedding_resident(const bf16* table, int64_t vocab, int64_t hidden,
                                  const int32_t* ids, int64_t n, float* out);

  // ---- Routing on the device: every pointer below is in backend memory (device memory for
  // cuda), so a MoE layer runs without the host reading the routing. The layout ops compute what
  // kernels/common/moe_layout.h describes; host-memory backends run its emulation.
  // router_topk into backend memory, no host copy; a row with non-finite logits gets ids -1,
  // which the layout's error flag reports.
  virtual void router_topk_resident(const float* logits, int64_t rows, int64_t experts, int64_t k,
                                    bool renormalise, int32_t* ids, float* weights);
  virtual void dispatch_layout_resident(const layout::SourceLayoutView& view);
  virtual void group_by_slot_resident(const layout::SlotGroupingView& view);
  // gather_rows with idx in backend memory.
  virtual void gather_rows_resident(const float* src, int64_t width, const int32_t* idx, int64_t n,
                                    float* dst);
  // partial[own_last_row(r)] = partial_element(r) for the R = num_rows received rows (the own
  // block [own_begin, own_begin + own_rows) lies last).
  virtual void combine_partial_resident(const RouteEntry* routes, const int32_t* pair_of_entry,
                                        const float* expert_out, int64_t width, int32_t top_k,
                                        int32_t num_rows, int32_t own_begin, int32_t own_rows,
                                        float* partial);
  // x[t] = combine_residual_element(t) for t < num_tokens: combine and residual add in one pass.
  virtual void combine_residual_resident(const layout::CombineSources& src,
                                         const int32_t* token_offsets, const int32_t* token_rows,
                                         int64_t width, int32_t num_tokens, float* x);
  // Grouped SwiGLU with the grouping in backend memory (see ResidentExpertBatch): out [P, hidden]
  // row p = SwiGLU of x[row_index[p]] with its slot's weights, P = slot_begin[num_slots]. Same
  // numerics as grouped_expert_swiglu. Host-memory backends: grouped_expert_swiglu itself.
  virtual void expert_swiglu_resident(const float* x, int64_t hidden, int64_t inter,
                                      const ResidentExpertBatch& batch, float* out);
  virtual void add_inplace(float* x, const float* y, int64_t n) = 0;
  virtual void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                           float* dst) = 0;
  // dst[i] = sum over j in [offsets[i], offsets[i+1]) of weights[j] * src[src_index[j]], summed
  // in j order in fp32; weights == nullptr means 1. src [*, width], dst [n, width].
  virtual void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                                const float* weights, const int64_t* offsets, int64_t n,
                                float* dst) = 0;

  // ---- Fused ops of the attention block. Each default composes the ops above in the order the
  // model called them before these existed, so a backend that keeps the defaults (cpu) computes
  // the same bits as before; the CUDA backend runs each as fewer kernels.

  // True when the backend reads bf16 copies of GEMM inputs written by their producer (the
  // y_bf16 / x_bf16 arguments below) instead of rounding the fp32 input itself. The model
  // allocates those copies only then and passes nullptr otherwise.
  virtual bool takes_bf16_activations() const { return false; }
  // rmsnorm(); y_bf16 (nullable, [rows, dim] backend memory) also receives bf16(y).
  virtual void rmsnorm_rounded(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                               float* y, bf16* y_bf16);
  // linear(); x_bf16 (nullable) holds bf16(x) as a producer wrote it: a backend whose GEMMs round
  // x to bf16 (rounding.h kLinearInput) reads it instead of rounding x again, same values.
  virtual void linear_rounded(const float* x, const bf16* x_bf16, const bf16* w, int64_t rows,
                              int64_t in, int64_t out, float* y);
  // The q, k and v projections with the three weights stacked in one matrix w_qkv
  // [q_width + 2 * kv_width, hidden] (q rows, then k rows, then v rows): q [rows, q_width], k and
  // v [rows, kv_width]. x_bf16 as in linear_rounded. Default: linear() on each block of rows.
  virtual void qkv_projection(const float* x, const bf16* x_bf16, const bf16* w_qkv, int64_t rows,
                              int64_t hidden, int64_t q_width, int64_t kv_width, float* q, float* k,
                              float* v);
  // In place on q [rows, heads, head_dim] and k [rows, kv_heads, head_dim]: per-head RMSNorm
  // (weights q_norm_w / k_norm_w [head_dim]), then rotate-half RoPE at positions [rows], which are
  // in BACKEND memory (the model uploads them once per step). Default: rmsnorm(q), rmsnorm(k),
  // rope(q), rope(k), which reads positions on the host (host-memory backends only).
  virtual void qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                            const int32_t* positions, int64_t rows, int64_t heads, int64_t kv_heads,
                            int64_t head_dim, float eps, double theta);
  // x [rows, dim] += delta, then y = rmsnorm(x) (y_bf16 as in rmsnorm_rounded).
  // Default: add_inplace, then rmsnorm_rounded.
  virtual void add_rmsnorm(float* x, const float* delta, const bf16* w, int64_t rows, int64_t dim,
                           float eps, float* y, bf16* y_bf16);

 protected:
  void note_alloc(size_t size_bytes) {
    allocated_bytes_ += size_bytes;
    if (allocated_bytes_ > peak_allocated_bytes_) peak_allocated_bytes_ = allocated_bytes_;
  }
  void note_free(size_t size_bytes) { allocated_bytes_ -= size_bytes; }

 private:
  size_t allocated_bytes_ = 0;
  size_t peak_allocated_bytes_ = 0;
};

// Move-only typed buffer in a backend's memory. Size in elements.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend& backend, size_t size) : backend_(&backend), size_(size) {
    if (size_ > 0) data_ = static_cast<T*>(backend.allocate(size_ * sizeof(T)));
  }
  ~Buffer() { reset(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept
      : backend_(std::exchange(o.backend_, nullptr)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = std::exchange(o.backend_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  void reset() noexcept {
    if (data_ != nullptr) backend_->deallocate(data_, size_ * sizeof(T));
    data_ = nullptr;
    size_ = 0;
  }
  // Grows (never shrinks) to at least `size` elements; contents are not preserved.
  void ensure(Backend& backend, size_t size) {
    if (size <= size_ && backend_ == &backend) return;
    reset();
    backend_ = &backend;
    size_ = size;
    if (size_ > 0) data_ = static_cast<T*>(backend.allocate(size_ * sizeof(T)));
  }
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t size_bytes() const { return size_ * sizeof(T); }

 private:
  Backend* backend_ = nullptr;
  T* data_ = nullptr;
  size_t size_ = 0;
};

// What make_backend builds. compute_dtype unset means the backend's own default (cpu: fp32,
// cuda: bf16); cuda with fp32 is refused (its GEMMs are bf16 only).
struct BackendOptions {
  std::string name = "cpu";  // cpu | cuda
  int local_rank = 0;        // picks the device of a cuda backend
  std::optional<ComputeDtype> compute_dtype;
};

// Backends known to this build: "cpu" always, "cuda" when built with CUDA. Throws on others.
std::unique_ptr<Backend> make_backend(const BackendOptions& options);
// Same as make_backend({name, local_rank, default compute dtype}).
std::unique_ptr<Backend> make_backend(const std::string& name, int local_rank);

}  // namespace moe::kernels
