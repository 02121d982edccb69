// HostBackend (host_backend.h). Kept apart from the CPU backend (kernels/cpu/) so that builds
// without BLAS (tools/device/standalone, whose GPU tests compare against the naive reference
// backend) link it.
#include "kernels/host_backend.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>

#include "kernels/bf16_rows.h"
#include "kernels/common/check.h"
#include "kernels/host_simd.h"

// The combine's row loops (multiply-add) get AVX-512 and AVX2 clones with FMA contraction off
// (host_simd.h): each column's product is rounded before the add, as in the bodies, so every
// clone gives their bits. The bf16 rows' conversions and sums are bf16_rows.h's.
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace moe::kernels {
namespace {

BackendTraits in_host_memory(BackendTraits traits) {
  traits.host_memory = true;
  traits.layout_chunk = layout::kHostLayoutChunk;
  return traits;
}

// The combine bodies' arithmetic (layout::partial_block, combine_residual_block) a whole row at a
// time, so that the column loops vectorise: per column the same operations in the same order,
// hence the same bits as the bodies (tests/gpu_host/test_device_layout.cpp compares them).
// A row's weighted sum is the sum over its entries j (ascending) with a pair here of
// weight_j * expert_out[pair_j], the first term stored; 0 if none. Rows of fp32 or of bf16 values
// (widened exactly, as layout::load_block does).
inline float widened(float v) {
  return v;
}
inline float widened(uint16_t bits) {
  return cuda::bf16_bits_to_f32(bits);
}

// acc = w * src (first), or acc + w * src.
MOE_CLONES_AVX512_EXACT void weighted_add(const float* __restrict src, float w, int64_t width,
                                          bool first, float* __restrict acc) {
  if (first) {
    for (int64_t c = 0; c < width; ++c) acc[c] = w * src[c];
  } else {
    for (int64_t c = 0; c < width; ++c) acc[c] = acc[c] + w * src[c];
  }
}

// x = x + (sum + row), or x + row when sum is null (row fp32 or bf16 values): a token's last row
// and the residual add in one pass, the same two adds in the same order as acc = sum + row;
// x = x + acc.
template <class T>
MOE_CLONES_AVX512_EXACT void add_sum_row(const float* __restrict sum, const T* __restrict row,
                                         int64_t width, float* __restrict x) {
  if (sum == nullptr) {
    for (int64_t c = 0; c < width; ++c) x[c] = x[c] + widened(row[c]);
  } else {
    for (int64_t c = 0; c < width; ++c) x[c] = x[c] + (sum[c] + widened(row[c]));
  }
}

// acc = acc + in.
MOE_CLONES_AVX512_EXACT void add_row(const float* __restrict in, int64_t width,
                                     float* __restrict acc) {
  for (int64_t c = 0; c < width; ++c) acc[c] = acc[c] + in[c];
}

// A row of `width` values as an fp8 wire row: encode_fp8_block's body over every block, in a
// vector clone (the encoding divides and converts, each step exact or correctly rounded, so no
// clone changes a bit).
MOE_CLONES_AVX512_EXACT void encode_fp8_row(const float* src, int64_t width, unsigned char* row) {
  for (int64_t b = 0; b < (width + kFp8Block - 1) / kFp8Block; ++b)
    wire::encode_fp8_block(src, row, width, b);
}

// An fp8 wire row widened: wire::decode's values (e4m3_dequantise), a block at a time, the codes'
// values from a table of all 256.
MOE_CLONES_AVX512_EXACT void decode_fp8_row(const unsigned char* row, int64_t width, float* out) {
  static const std::array<float, 256> value = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = e4m3_to_float(static_cast<uint8_t>(c));
    return t;
  }();
  const float* scales = wire::fp8_row_scales(row, width);
  for (int64_t c0 = 0; c0 < width; c0 += kFp8Block) {
    const float scale = scales[c0 / kFp8Block];
    const int64_t c1 = c0 + kFp8Block < width ? c0 + kFp8Block : width;
    for (int64_t c = c0; c < c1; ++c) out[c] = value[row[c]] * scale;
  }
}

void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
}

// The weighted sums of one combine's rows, and where each goes (bf16_rows.h's SumTo): from bf16
// expert outputs in one pass over the row's terms (weighted_sum_bf16); from fp32 ones term by
// term into a scratch row first.
class RowSums {
 public:
  RowSums(const RouteEntry* routes, const int32_t* pair_of_entry, layout::ExpertRows expert_out,
          int64_t width, int32_t top_k, CombineScratch& scratch)
      : routes_(routes),
        pair_of_entry_(pair_of_entry),
        expert_out_(expert_out),
        width_(width),
        top_k_(top_k),
        scratch_(scratch) {
    if (static_cast<int64_t>(scratch_.sum.size()) < width) scratch_.sum.resize(width);
    scratch_.rows.resize(static_cast<size_t>(top_k));
    scratch_.weights.resize(static_cast<size_t>(top_k));
  }

  void to(int32_t r, SumTo to, float* out, const float* acc, uint16_t* bits) const {
    if (expert_out_.dtype == WireDtype::kBF16) {
      const auto* outputs = reinterpret_cast<const uint16_t*>(expert_out_.data);
      WeightedRows terms{scratch_.rows.data(), scratch_.weights.data(), 0};
      for (int32_t j = 0; j < top_k_; ++j) {
        const int32_t p = pair_of_entry_[r * top_k_ + j];
        if (p < 0) continue;
        scratch_.rows[terms.count] = outputs + static_cast<int64_t>(p) * width_;
        scratch_.weights[terms.count++] = routes_[r * top_k_ + j].weight;
      }
      weighted_sum_bf16(terms, width_, to, out, acc, bits);
      return;
    }
    float* sum = to == SumTo::kStore ? out : scratch_.sum.data();
    const auto* outputs = reinterpret_cast<const float*>(expert_out_.data);
    bool first = true;
    for (int32_t j = 0; j < top_k_; ++j) {
      const int32_t p = pair_of_entry_[r * top_k_ + j];
      if (p < 0) continue;
      weighted_add(outputs + static_cast<int64_t>(p) * width_, routes_[r * top_k_ + j].weight,
                   width_, first, sum);
      first = false;
    }
    if (first) std::fill(sum, sum + width_, 0.0f);
    if (to == SumTo::kAdd) add_row(sum, width_, out);
    if (to == SumTo::kAddSum) add_sum_row(acc, sum, width_, out);
    if (to == SumTo::kNarrow) narrow_bf16(sum, width_, bits);
  }

  // Asks for the expert output rows row r's sum reads (they lie scattered over the experts'
  // output: each is a new stream for the hardware prefetcher).
  void prefetch(int32_t r) const {
    const int64_t bytes = expert_out_.row_bytes(width_);
    for (int32_t j = 0; j < top_k_; ++j) {
      const int32_t p = pair_of_entry_[r * top_k_ + j];
      if (p >= 0) prefetch_bytes(expert_out_.data + p * bytes, bytes);
    }
  }

 private:
  const RouteEntry* routes_;
  const int32_t* pair_of_entry_;
  layout::ExpertRows expert_out_;
  int64_t width_;
  int32_t top_k_;
  CombineScratch& scratch_;
};

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
  widen_bf16(reinterpret_cast<const uint16_t*>(row), width, !first, acc);
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
  narrow_bf16(y, rows * dim, reinterpret_cast<uint16_t*>(y_bf16));
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
  // Token by token: the token's row is encoded once (pack_columns' or pack_fp8_block's bodies,
  // whole rows, the bf16 one in bf16_rows.h), into its first destination, and copied (every
  // encoding is a self-contained row of row_bytes) to the others while it is in L1.
  for (int32_t token = 0; token < v.num_tokens; ++token) {
    const float* src = v.hidden + static_cast<int64_t>(token) * v.f.width;
    const unsigned char* encoded = nullptr;
    for (int32_t k = v.token_offsets[token]; k < v.token_offsets[token + 1]; ++k) {
      const int32_t i = v.token_rows[k];
      const wire::PackTarget t = wire::pack_target(v, i);
      wire::pack_routes(v, i, t);
      if (t.row == nullptr) continue;
      if (encoded != nullptr) {
        std::memcpy(t.row, encoded, static_cast<size_t>(v.f.row_bytes));
      } else if (v.f.dtype == WireDtype::kFP8) {
        encode_fp8_row(src, v.f.width, t.row);
      } else if (v.f.dtype == WireDtype::kBF16 && v.hidden_bf16 != nullptr) {
        std::memcpy(t.row, v.hidden_bf16 + static_cast<int64_t>(token) * v.f.width,
                    static_cast<size_t>(v.f.width) * sizeof(uint16_t));
      } else if (v.f.dtype == WireDtype::kBF16) {
        narrow_bf16(src, v.f.width, reinterpret_cast<uint16_t*>(t.row));
      } else {
        std::memcpy(t.row, src, static_cast<size_t>(v.f.width) * sizeof(float));
      }
      if (encoded == nullptr) encoded = t.row;
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
      if (v.own_packed) continue;
      const int32_t token = v.send_token[v.send_offsets[v.rank] + x.index];
      const float* src = v.hidden + static_cast<int64_t>(token) * v.f.width;
      if (v.f.dtype != WireDtype::kBF16) {
        std::memcpy(out, src, static_cast<size_t>(v.f.width) * sizeof(float));
      } else if (v.in_place && v.hidden_bf16 != nullptr) {
        std::memcpy(row, v.hidden_bf16 + static_cast<int64_t>(token) * v.f.width,
                    static_cast<size_t>(v.f.width) * sizeof(uint16_t));
      } else if (v.in_place) {
        narrow_bf16(src, v.f.width, reinterpret_cast<uint16_t*>(row));
      } else {
        round_bf16(src, v.f.width, out);
      }
    } else if (v.in_place) {
      continue;
    } else if (v.f.dtype == WireDtype::kBF16) {
      const auto* in = reinterpret_cast<const uint16_t*>(wire::remote_row(v, x.source, x.index));
      widen_bf16(in, v.f.width, false, out);
    } else if (v.f.dtype == WireDtype::kF32) {
      std::memcpy(out, wire::remote_row(v, x.source, x.index),
                  static_cast<size_t>(v.f.width) * sizeof(float));
    } else {
      decode_fp8_row(wire::remote_row(v, x.source, x.index), v.f.width, out);
    }
  }
}

void HostBackend::combine_partial(const layout::PartialRowsView& v) {
  const int64_t row_bytes = wire::row_bytes(v.dtype, v.width);
  const RowSums sums(v.routes, v.pair_of_entry, v.expert_out, v.width, v.top_k, combine_scratch_);
  const int32_t rows = v.num_rows - v.own_rows;
  auto row_of = [&](int32_t q) { return q < v.own_begin ? q : q + v.own_rows; };
  for (int32_t q = 0; q < rows; ++q) {
    if (q + 1 < rows) sums.prefetch(row_of(q + 1));
    unsigned char* out = v.out + q * row_bytes;
    if (v.dtype == WireDtype::kF32) {
      sums.to(row_of(q), SumTo::kStore, reinterpret_cast<float*>(out), nullptr, nullptr);
    } else {
      sums.to(row_of(q), SumTo::kNarrow, nullptr, nullptr, reinterpret_cast<uint16_t*>(out));
    }
  }
}

void HostBackend::combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                                   const int32_t* token_rows, int64_t width, int32_t num_tokens,
                                   float* x) {
  const int64_t row_bytes = wire::row_bytes(src.dtype, width);
  const RowSums sums(src.routes, src.pair_of_entry, src.expert_out, width, src.top_k,
                     combine_scratch_);
  if (static_cast<int64_t>(combine_scratch_.acc.size()) < width) combine_scratch_.acc.resize(width);
  float* acc = combine_scratch_.acc.data();
  // Asks for token t's rows: the own rows' expert outputs, the returned rows, x.
  auto prefetch_rows = [&](int32_t t) {
    for (int32_t k = token_offsets[t]; k < token_offsets[t + 1]; ++k) {
      const int32_t row = token_rows[k];
      const int32_t own = row - src.own_send_begin;
      if (own >= 0 && own < src.own_rows) {
        sums.prefetch(src.own_recv_begin + own);
      } else {
        const int32_t q = row < src.own_send_begin ? row : row - src.own_rows;
        prefetch_bytes(layout::returned_row(src, q, row_bytes), row_bytes);
      }
    }
    prefetch_bytes(x + t * width, width * 4);
  };
  if (num_tokens > 0) prefetch_rows(0);
  for (int32_t t = 0; t < num_tokens; ++t) {
    if (t + 1 < num_tokens) prefetch_rows(t + 1);
    const int32_t begin = token_offsets[t], end = token_offsets[t + 1];
    float* x_row = x + t * width;
    if (end == begin) {  // x + 0, as the bodies add
      std::fill(acc, acc + width, 0.0f);
      add_row(acc, width, x_row);
      continue;
    }
    // acc = the token's rows summed in order; the last row goes straight into x (x + acc).
    for (int32_t k = begin; k < end; ++k) {
      const bool first = k == begin, last = k + 1 == end;
      const int32_t row = token_rows[k];
      const int32_t own = row - src.own_send_begin;
      if (own >= 0 && own < src.own_rows) {
        const SumTo to =
            first ? (last ? SumTo::kAdd : SumTo::kStore) : (last ? SumTo::kAddSum : SumTo::kAdd);
        sums.to(src.own_recv_begin + own, to, last ? x_row : acc, acc, nullptr);
        continue;
      }
      const int32_t q = row < src.own_send_begin ? row : row - src.own_rows;
      const unsigned char* returned = layout::returned_row(src, q, row_bytes);
      const float* sum = first ? nullptr : acc;
      if (!last) {
        add_wire_row(src.dtype, returned, width, first, acc);
      } else if (src.dtype == WireDtype::kF32) {
        add_sum_row(sum, reinterpret_cast<const float*>(returned), width, x_row);
      } else {
        add_sum_row(sum, reinterpret_cast<const uint16_t*>(returned), width, x_row);
      }
    }
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
