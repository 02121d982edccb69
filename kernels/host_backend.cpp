// HostBackend (host_backend.h). Kept apart from the CPU backend (kernels/cpu/) so that builds
// without BLAS (tools/device/standalone, whose GPU tests compare against the naive reference
// backend) link it.
#include "kernels/host_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/common/check.h"

// The bf16 row conversions get AVX-512 and AVX2 clones picked at load time (the default build
// targets SSE2, whose 32-to-16-bit narrowing is slow). Per element they are the bodies'
// conversions (kernels/cuda/device_math.h), and they multiply nothing (no clone can contract an
// FMA), so the bits do not depend on the clone.
// The combine's row loops (multiply-add) get the same clones with FMA contraction off (GCC's
// optimize attribute): each column's product is rounded before the add, as in the bodies, so
// every clone gives their bits; without that attribute they stay plain loops.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX2__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define MOE_WIRE_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#if !defined(__clang__)
#define MOE_COMBINE_CLONES                                                     \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
                 optimize("fp-contract=off")))
#endif
#endif
#endif
#ifndef MOE_WIRE_CLONES
#define MOE_WIRE_CLONES
#endif
#ifndef MOE_COMBINE_CLONES
#define MOE_COMBINE_CLONES
#endif

namespace moe::kernels {
namespace {

MOE_WIRE_CLONES void encode_bf16_row(const float* __restrict src, uint16_t* __restrict out,
                                     int64_t width) {
  for (int64_t c = 0; c < width; ++c) out[c] = cuda::f32_to_bf16_bits(src[c]);
}

// out = the bf16 values of src (round to nearest even), as fp32.
MOE_WIRE_CLONES void round_bf16_row(const float* __restrict src, int64_t width,
                                    float* __restrict out) {
  for (int64_t c = 0; c < width; ++c)
    out[c] = cuda::bf16_bits_to_f32(cuda::f32_to_bf16_bits(src[c]));
}

// out = the bf16 row widened (first), or out + the widened row.
MOE_WIRE_CLONES void widen_bf16_row(const uint16_t* __restrict in, int64_t width, bool add,
                                    float* __restrict out) {
  if (add) {
    for (int64_t c = 0; c < width; ++c) out[c] = out[c] + cuda::bf16_bits_to_f32(in[c]);
  } else {
    for (int64_t c = 0; c < width; ++c) out[c] = cuda::bf16_bits_to_f32(in[c]);
  }
}

BackendTraits in_host_memory(BackendTraits traits) {
  traits.host_memory = true;
  traits.layout_chunk = layout::kHostLayoutChunk;
  return traits;
}

// The combine bodies' arithmetic (layout::partial_block, combine_residual_block) a whole row at a
// time, so that the column loops vectorise: per column the same operations in the same order,
// hence the same bits as the bodies (tests/gpu_host/test_device_layout.cpp compares them).
// acc = sum over j (ascending) of weight_j * expert_out[pair_j], the first term stored; 0 if none.
// Rows of fp32 or of bf16 values (widened exactly, as layout::load_block does).
inline float widened(float v) {
  return v;
}
inline float widened(uint16_t bits) {
  return cuda::bf16_bits_to_f32(bits);
}

// acc = w * src (first), or acc + w * src; src fp32 or bf16 values.
template <class T>
MOE_COMBINE_CLONES void weighted_add(const T* __restrict src, float w, int64_t width, bool first,
                                     float* __restrict acc) {
  if (first) {
    for (int64_t c = 0; c < width; ++c) acc[c] = w * widened(src[c]);
  } else {
    for (int64_t c = 0; c < width; ++c) acc[c] = acc[c] + w * widened(src[c]);
  }
}

// acc = acc + in.
MOE_COMBINE_CLONES void add_row(const float* __restrict in, int64_t width, float* __restrict acc) {
  for (int64_t c = 0; c < width; ++c) acc[c] = acc[c] + in[c];
}

template <class T>
void weighted_row_of(const RouteEntry* routes, const int32_t* pair_of_entry, const T* expert_out,
                     int64_t width, int32_t top_k, int32_t r, float* __restrict acc) {
  bool first = true;
  for (int32_t j = 0; j < top_k; ++j) {
    const int32_t p = pair_of_entry[r * top_k + j];
    if (p < 0) continue;
    weighted_add(expert_out + static_cast<int64_t>(p) * width, routes[r * top_k + j].weight, width,
                 first, acc);
    first = false;
  }
  if (first) std::fill(acc, acc + width, 0.0f);
}

void weighted_row(const RouteEntry* routes, const int32_t* pair_of_entry,
                  layout::ExpertRows expert_out, int64_t width, int32_t top_k, int32_t r,
                  float* __restrict acc) {
  if (expert_out.dtype == WireDtype::kF32) {
    weighted_row_of(routes, pair_of_entry, reinterpret_cast<const float*>(expert_out.data), width,
                    top_k, r, acc);
  } else {
    weighted_row_of(routes, pair_of_entry, reinterpret_cast<const uint16_t*>(expert_out.data),
                    width, top_k, r, acc);
  }
}

// acc = row (first) or acc + row, the row in wire type t (fp32 or bf16), widened exactly.
void add_wire_row(WireDtype t, const unsigned char* row, int64_t width, bool first,
                  float* __restrict acc) {
  if (t == WireDtype::kF32) {
    const float* __restrict in = reinterpret_cast<const float*>(row);
    if (first) {
      std::memcpy(acc, in, static_cast<size_t>(width) * sizeof(float));
    } else {
      add_row(in, width, acc);
    }
    return;
  }
  widen_bf16_row(reinterpret_cast<const uint16_t*>(row), width, !first, acc);
}

float* grown(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
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

void HostBackend::pack_rows(const wire::PackView& v) {
  for (int32_t d = 0; d < v.num_ranks; ++d) wire::pack_header(v, d);
  const int32_t rows = v.send_offsets[v.num_ranks];
  const int64_t blocks = (v.f.width + kFp8Block - 1) / kFp8Block;
  for (int32_t i = 0; i < rows; ++i) {
    wire::pack_routes(v, i);
    if (v.f.dtype == WireDtype::kFP8) {
      for (int64_t b = 0; b < blocks; ++b) wire::pack_fp8_block(v, i, b);
      continue;
    }
    // pack_columns' rows, whole (the bf16 one in a vector clone).
    const wire::PackTarget t = wire::pack_target(v, i);
    if (t.row == nullptr) continue;
    const float* src = v.hidden + static_cast<int64_t>(v.send_token[i]) * v.f.width;
    if (v.f.dtype == WireDtype::kBF16) {
      encode_bf16_row(src, reinterpret_cast<uint16_t*>(t.row), v.f.width);
    } else {
      std::memcpy(t.row, src, static_cast<size_t>(v.f.width) * sizeof(float));
    }
  }
}

void HostBackend::receive_rows(const wire::ReceiveView& v) {
  wire::plan_receive(v);
  const int32_t rows = wire::recv_offsets(v)[v.num_ranks];
  for (int32_t r = 0; r < rows; ++r) {
    wire::receive_routes(v, r);
    // receive_columns' rows, whole (the bf16 conversions in vector clones).
    const wire::ReceivedRow x = wire::received_row(v, r);
    unsigned char* row = wire::input_row(v, wire::row_position(v, x, r));
    auto* out = reinterpret_cast<float*>(row);
    if (x.source == v.rank) {
      const int32_t token = v.send_token[v.send_offsets[v.rank] + x.index];
      const float* src = v.hidden + static_cast<int64_t>(token) * v.f.width;
      if (v.f.dtype != WireDtype::kBF16) {
        std::memcpy(out, src, static_cast<size_t>(v.f.width) * sizeof(float));
      } else if (v.in_place) {
        encode_bf16_row(src, reinterpret_cast<uint16_t*>(row), v.f.width);
      } else {
        round_bf16_row(src, v.f.width, out);
      }
    } else if (v.in_place) {
      continue;
    } else if (v.f.dtype == WireDtype::kBF16) {
      const auto* in = reinterpret_cast<const uint16_t*>(wire::remote_row(v, x.source, x.index));
      widen_bf16_row(in, v.f.width, false, out);
    } else if (v.f.dtype == WireDtype::kF32) {
      std::memcpy(out, wire::remote_row(v, x.source, x.index),
                  static_cast<size_t>(v.f.width) * sizeof(float));
    } else {
      wire::receive_columns(v, r, 0, v.f.width);
    }
  }
}

void HostBackend::combine_partial(const layout::PartialRowsView& v) {
  const int64_t row_bytes = wire::row_bytes(v.dtype, v.width);
  float* acc = grown(combine_rows_, v.width);
  for (int32_t q = 0; q < v.num_rows - v.own_rows; ++q) {
    const int32_t r = q < v.own_begin ? q : q + v.own_rows;
    unsigned char* out = v.out + q * row_bytes;
    if (v.dtype == WireDtype::kF32) {
      weighted_row(v.routes, v.pair_of_entry, v.expert_out, v.width, v.top_k, r,
                   reinterpret_cast<float*>(out));
      continue;
    }
    weighted_row(v.routes, v.pair_of_entry, v.expert_out, v.width, v.top_k, r, acc);
    encode_bf16_row(acc, reinterpret_cast<uint16_t*>(out), v.width);
  }
}

void HostBackend::combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                                   const int32_t* token_rows, int64_t width, int32_t num_tokens,
                                   float* x) {
  const int64_t row_bytes = wire::row_bytes(src.dtype, width);
  float* acc = grown(combine_rows_, 2 * width);
  float* own_row = acc + width;
  for (int32_t t = 0; t < num_tokens; ++t) {
    const int32_t begin = token_offsets[t], end = token_offsets[t + 1];
    for (int32_t k = begin; k < end; ++k) {
      const int32_t row = token_rows[k];
      const int32_t own = row - src.own_send_begin;
      if (own >= 0 && own < src.own_rows) {
        weighted_row(src.routes, src.pair_of_entry, src.expert_out, width, src.top_k,
                     src.own_recv_begin + own, own_row);
        add_wire_row(WireDtype::kF32, reinterpret_cast<const unsigned char*>(own_row), width,
                     k == begin, acc);
      } else {
        const int32_t q = row < src.own_send_begin ? row : row - src.own_rows;
        add_wire_row(src.dtype, layout::returned_row(src, q, row_bytes), width, k == begin, acc);
      }
    }
    if (end == begin) std::fill(acc, acc + width, 0.0f);  // x + 0, as the bodies add
    add_row(acc, width, x + t * width);                   // x + acc: the same sum as acc + x
  }
}

void HostBackend::expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                                const ExpertBatch& batch, float* out, const bf16* x_bf16,
                                bf16* out_bf16) {
  MOE_CHECK(x_bf16 == nullptr || compute_dtype() == ComputeDtype::kBF16,
            "expert_swiglu: bf16 input rows need bf16 compute (backend {} computes in {})", name(),
            compute_dtype_name(compute_dtype()));
  MOE_CHECK(out_bf16 == nullptr || compute_dtype() == ComputeDtype::kBF16,
            "expert_swiglu: bf16 output rows need bf16 compute (backend {} computes in {})", name(),
            compute_dtype_name(compute_dtype()));
  groups_.clear();
  for (int64_t s = 0; s < batch.num_slots; ++s) {
    const int64_t begin = batch.slot_begin[s], end = batch.slot_begin[s + 1];
    MOE_CHECK(begin >= 0 && end >= begin && end <= batch.max_pairs,
              "expert_swiglu: slot {} covers pairs [{}, {}) of {}", s, begin, end, batch.max_pairs);
    if (end > begin) groups_.push_back({batch.slot_weights[s], begin, end - begin});
  }
  if (groups_.empty()) return;
  grouped_swiglu(x, x_bf16, hidden, inter, groups_.data(), static_cast<int64_t>(groups_.size()),
                 batch.row_index, out, out_bf16);
}

}  // namespace moe::kernels
