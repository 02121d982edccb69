// The compute backend the model is written against once: memory, and every op of the forward,
// grouped by family. Tensors, weights AND integer metadata (ids, positions, row indices, routing)
// live in backend memory (host for cpu, VRAM for cuda), so one MoE path serves every backend and
// a decode step can run without the host reading anything. Where the host also holds a copy of
// some metadata, an op may take it (`host_*` arguments) to size its launches without a device read.
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
// "fp32" | "bf16" (inline: the device's fallback build links no backend.cpp).
constexpr const char* compute_dtype_name(ComputeDtype dtype) {
  return dtype == ComputeDtype::kBF16 ? "bf16" : "fp32";
}
// Parses "fp32" or "bf16"; anything else throws moe::Error (subsystem "config") naming both.
ComputeDtype parse_compute_dtype(const std::string& text);

// The backends a build may have.
enum class BackendKind : int32_t { kCpu = 0, kCuda = 1 };
// "cpu" | "cuda".
constexpr const char* backend_kind_name(BackendKind kind) {
  return kind == BackendKind::kCuda ? "cuda" : "cpu";
}
// Parses "cpu" or "cuda"; anything else throws moe::Error (subsystem "config") naming both.
BackendKind parse_backend_kind(const std::string& text);
// The element type each backend keeps its KV cache in (cpu: fp32; cuda: bf16), for those who size
// a cache without building the backend.
constexpr KvDtype kv_cache_dtype(BackendKind kind) {
  return kind == BackendKind::kCuda ? KvDtype::kBF16 : KvDtype::kF32;
}

// What a backend is, fixed when it is built.
struct BackendTraits {
  std::string name;                  // "cpu", "cuda", ...
  bool host_memory = true;           // tensors live in this process's memory
  KvDtype kv_dtype = KvDtype::kF32;  // element type attention() expects of the cache
  ComputeDtype compute_dtype = ComputeDtype::kF32;
  // GEMMs read bf16 copies of their inputs written by the producer (the y_bf16 / x_bf16
  // arguments below) instead of rounding the fp32 input themselves; the model allocates those
  // copies only then and passes nullptr otherwise.
  bool bf16_activations = false;
  // Items per chunk of the layout ops' counting sorts (kernels/common/moe_layout.h).
  int32_t layout_chunk = layout::kDeviceLayoutChunk;
};

// Device graphs: the ops enqueued between begin_capture() and end_capture() are recorded (not
// run) into a graph that launch() replays with the pointers and sizes it was captured with. Only
// ops whose metadata is in backend memory may be captured (a host staging, a host read or a
// buffer that grows during capture throws).
class DeviceGraphs {
 public:
  virtual ~DeviceGraphs() = default;
  // Changes whenever the backend's own scratch moves (graphs captured before read freed memory).
  virtual int64_t memory_generation() const = 0;
  // Whether expert_swiglu can run with its slot counts in device memory only (no host_slot_begin)
  // for these widths: the condition for capturing a MoE layer's experts.
  virtual bool experts_capturable(int64_t hidden, int64_t inter) const = 0;
  virtual void begin_capture() = 0;
  virtual int64_t end_capture() = 0;  // handle of the instantiated graph
  virtual void abort_capture() noexcept = 0;
  virtual void launch(int64_t handle) = 0;
  virtual void release(int64_t handle) noexcept = 0;  // the graph and its executable
  virtual void release_all() noexcept = 0;
};

class Backend {
 public:
  explicit Backend(BackendTraits traits) : traits_(std::move(traits)) {}
  virtual ~Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  const BackendTraits& traits() const { return traits_; }
  const std::string& name() const { return traits_.name; }
  bool is_host_memory() const { return traits_.host_memory; }
  KvDtype kv_cache_dtype() const { return traits_.kv_dtype; }
  ComputeDtype compute_dtype() const { return traits_.compute_dtype; }
  bool takes_bf16_activations() const { return traits_.bf16_activations; }
  size_t allocated_bytes() const { return allocated_bytes_; }
  size_t peak_allocated_bytes() const { return peak_allocated_bytes_; }

  // ---- Memory. Bytes are spelled _bytes; allocate never returns null (throws).
  virtual void* allocate(size_t size_bytes) = 0;
  virtual void deallocate(void* ptr, size_t size_bytes) noexcept = 0;
  virtual void upload(void* dst, const void* host_src, size_t size_bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t size_bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t size_bytes) = 0;
  virtual void fill_zero(void* dst, size_t size_bytes) = 0;
  virtual void synchronize() = 0;
  // Bytes in use on the whole device this backend computes on (cudaMemGetInfo: every context and
  // process on it), or -1 for a backend in host memory.
  virtual int64_t device_used_bytes() const { return -1; }
  // The stream ops are enqueued on (a cudaStream_t for cuda), for a device communicator to order
  // its exchanges against; nullptr for host backends.
  virtual void* compute_stream() const { return nullptr; }
  // A timer on this backend's timeline (phase_timer.h); host clock unless overridden.
  virtual std::unique_ptr<PhaseTimer> make_phase_timer(int num_phases) {
    return std::make_unique<HostPhaseTimer>(num_phases);
  }
  // The backend's device graphs, or nullptr when it has none.
  virtual DeviceGraphs* graphs() { return nullptr; }

  // ---- Dense ops (contracts as kernels/cpu/ops.h; rounding points as kernels/common/rounding.h).
  // out [n, hidden] = table rows ids[0..n) (ids checked against vocab by the caller).
  virtual void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                         int64_t n, float* out) = 0;
  // y = rmsnorm(x) per row of dim; y_bf16 (nullable, [rows, dim]) also receives bf16(y).
  virtual void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps,
                       float* y, bf16* y_bf16 = nullptr) = 0;
  // y [rows, out] = x [rows, in] . w^T, w [out, in] bf16 or e4m3 with block scales (op_args.h).
  // x_bf16 (nullable) holds bf16(x) as a producer wrote it: a backend whose GEMMs round x to bf16
  // reads it instead of rounding x again (same values).
  virtual void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y,
                      const bf16* x_bf16 = nullptr) = 0;
  // The q, k and v projections with the three weights stacked in one matrix w_qkv
  // [q_width + 2 * kv_width, hidden] (q rows, then k rows, then v rows; split_qkv): q [rows,
  // q_width], k and v [rows, kv_width]; the same values as linear() on each block. x_bf16 as in
  // linear().
  virtual void qkv_projection(const float* x, const bf16* x_bf16, WeightView w_qkv, int64_t rows,
                              int64_t hidden, int64_t q_width, int64_t kv_width, float* q, float* k,
                              float* v) = 0;
  // In place on q [rows, heads, head_dim] and k [rows, kv_heads, head_dim]: per-head RMSNorm
  // (weights [head_dim]), then rotate-half RoPE at positions [rows].
  virtual void qk_norm_rope(float* q, float* k, const bf16* q_norm_w, const bf16* k_norm_w,
                            const int32_t* positions, int64_t rows, int64_t heads, int64_t kv_heads,
                            int64_t head_dim, float eps, double theta) = 0;
  // x [rows, dim] += delta, then y = rmsnorm(x) (y_bf16 as in rmsnorm).
  virtual void add_rmsnorm(float* x, const float* delta, const bf16* w, int64_t rows, int64_t dim,
                           float eps, float* y, bf16* y_bf16) = 0;
  virtual void add_inplace(float* x, const float* y, int64_t n) = 0;
  // Dense SwiGLU MLP: y [rows, hidden] = down(silu(gate(x)) * up(x)).
  virtual void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden,
                          int64_t inter, float* y) = 0;
  // dst [n, width] = src rows idx[0..n).
  virtual void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n,
                           float* dst) = 0;

  // ---- Attention: appends the new k/v rows to the cache at the positions batch.seqs gives, then
  // causal GQA attention of the new rows over the cache.
  virtual void attention(const float* q, const float* k, const float* v,
                         const AttentionBatch& batch, AttentionShape shape, KvCacheView cache,
                         float* out) = 0;

  // ---- MoE layout (kernels/common/moe_layout.h describes what each computes).
  // Softmax over all experts, then top-k (ids, weights [rows, k]); a row with non-finite logits
  // gets ids -1 (which the layout's error flag reports) or throws.
  virtual void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k,
                           bool renormalise, int32_t* ids, float* weights) = 0;
  virtual void dispatch_layout(const layout::SourceLayoutView& view) = 0;
  virtual void group_by_slot(const layout::SlotGroupingView& view) = 0;
  // The exchange's messages (kernels/common/moe_wire.h): every send row of the source layout
  // into its destination's message in the wire type (headers too), and the received messages
  // into the experts' input rows and the received route entries.
  virtual void pack_rows(const wire::PackView& view) = 0;
  virtual void receive_rows(const wire::ReceiveView& view) = 0;
  // The partial rows this rank sends back (every received row but its own), in the wire type.
  virtual void combine_partial(const layout::PartialRowsView& view) = 0;
  // x[t] += the sum of token t's combined rows, for t < num_tokens: combine and residual in one.
  virtual void combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                                const int32_t* token_rows, int64_t width, int32_t num_tokens,
                                float* x) = 0;

  // ---- Experts: out [P, hidden] row p = SwiGLU of x[row_index[p]] with its slot's weights.
  // x_bf16 (nullable; bf16 compute only, else moe::Error): rows [*, hidden] of bf16 values, read
  // instead of x (which may then be null). The experts round their input to bf16
  // (rounding.h), so bf16 rows give the bits of their fp32 widening passed as x.
  // out_bf16 (nullable; bf16 compute only, else moe::Error): rows [P, hidden] written there as
  // bf16 instead of into out (which may then be null). The experts round their output to bf16
  // (rounding.h), so these are exactly the values out would hold, in half the bytes.
  virtual void expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                             const ExpertBatch& batch, float* out, const bf16* x_bf16 = nullptr,
                             bf16* out_bf16 = nullptr) = 0;

 protected:
  void note_alloc(size_t size_bytes) {
    allocated_bytes_ += size_bytes;
    if (allocated_bytes_ > peak_allocated_bytes_) peak_allocated_bytes_ = allocated_bytes_;
  }
  void note_free(size_t size_bytes) { allocated_bytes_ -= size_bytes; }

 private:
  BackendTraits traits_;
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
  // Grows to at least `size` elements and uploads `host` (size elements) into it.
  void assign(Backend& backend, const T* host, size_t size) {
    ensure(backend, std::max<size_t>(size, 1));
    if (size > 0) backend.upload(data_, host, size * sizeof(T));
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
  BackendKind kind = BackendKind::kCpu;
  int local_rank = 0;  // picks the device of a cuda backend
  std::optional<ComputeDtype> compute_dtype;
};

// cpu always; cuda when built with CUDA (else throws, saying so).
std::unique_ptr<Backend> make_backend(const BackendOptions& options);
// Same as make_backend({parse_backend_kind(name), local_rank, default compute dtype}).
std::unique_ptr<Backend> make_backend(const std::string& name, int local_rank);

}  // namespace moe::kernels
