// Bf16Ops: rounding.h's rounding points on the CPU. Each op static_asserts the flags it
// implements, so a change to the statement fails to compile here until the code follows.
#include "kernels/cpu/bf16_ops.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "kernels/common/check.h"
#include "kernels/common/rounding.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/weight_rows.h"
#include "kernels/host_simd.h"

// As in ops.cpp: the dot-product loop gets an AVX2+FMA clone (host_simd.h).

namespace moe::kernels::cpu {
namespace {

// fp32 copy of a block of W rows in the fallback GEMM: sized to stay in L2.
constexpr int64_t kFallbackBlockBytes = 256 * 1024;
// bf16 copy of a block of dequantised e4m3 W rows for oneDNN (rows a multiple of 16).
constexpr int64_t kDequantBlockBytes = 512 * 1024;
// Lanes of each dot product: lane j sums the terms i = j mod kLanes in order.
constexpr int kLanes = 8;

// out[2 * o + r] = dot(a_r, w_o) for 2 rows of a and 4 rows of w (8 dot products sharing their
// loads). Each dot product is summed in an order fixed by n alone: lanes in order, then the lanes
// added in order, then the tail. Every output of the fallback GEMM goes through this one
// function (edge rows and columns repeat a valid row), so a result never depends on its
// neighbours in the call.
MOE_CLONES_AVX2 void dot_2x4(const float* a0, const float* a1, const float* const w[4], int64_t n,
                             float out[8]) {
  float acc[8][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float x0 = a0[i + l], x1 = a1[i + l];
      for (int o = 0; o < 4; ++o) {
        const float wv = w[o][i + l];
        acc[2 * o][l] += x0 * wv;
        acc[2 * o + 1][l] += x1 * wv;
      }
    }
  }
  float tail[8] = {};
  for (; i < n; ++i) {
    for (int o = 0; o < 4; ++o) {
      tail[2 * o] += a0[i] * w[o][i];
      tail[2 * o + 1] += a1[i] * w[o][i];
    }
  }
  for (int d = 0; d < 8; ++d) {
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += acc[d][l];
    out[d] = s + tail[d];
  }
}

template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// dst[0..n) = bf16(src), then rows [rows, padded_rows) of width `width` set to zero.
void to_bf16_padded(const float* src, int64_t rows, int64_t padded_rows, int64_t width, bf16* dst) {
  f32_to_bf16(src, rows * width, dst);
  std::memset(static_cast<void*>(dst + rows * width), 0,
              sizeof(bf16) * static_cast<size_t>((padded_rows - rows) * width));
}

void round_rows(const float* src, int64_t n, std::vector<bf16>& tmp, float* dst) {
  bf16* b = grow(tmp, n);
  f32_to_bf16(src, n, b);
  bf16_to_f32(b, n, dst);
}

void say_no_bf16_units_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (error_rank() > 0) return;
    const OnednnInfo& info = onednn_info();
    fmt::print(stderr,
               "moe-ep: bf16 compute: this CPU has no bf16 matmul units for oneDNN (ISA {}{}); "
               "bf16 numerics run on the fp32 GEMM path (bf16-rounded operands, fp32 "
               "accumulation), slower than fp32 mode\n",
               info.isa, info.built_with_onednn ? "" : ", built without oneDNN");
  });
}

}  // namespace

Bf16Ops::Bf16Ops(bool force_fallback) {
  if (!force_fallback && onednn_info().has_bf16_matmul) {
    onednn_ = std::make_unique<OnednnBf16Gemm>();
  } else if (!force_fallback) {
    say_no_bf16_units_once();
  }
}

Bf16Ops::~Bf16Ops() = default;

int64_t Bf16Ops::padded(int64_t m) const {
  return onednn_ ? OnednnBf16Gemm::padded_rows(m) : m;
}

void Bf16Ops::gemm(const bf16* a, WeightView w, int64_t m, int64_t n, int64_t k, float* c_f32,
                   bf16* c_bf16) {
  if (m <= 0 || n <= 0) return;
  if (onednn_ && !w.is_e4m3()) {
    onednn_->run(a, w.bf16_data(), m, n, k, c_f32 ? static_cast<void*>(c_f32) : c_bf16,
                 c_f32 == nullptr);
    return;
  }
  if (onednn_) {
    gemm_e4m3_blocks(a, w, m, n, k, c_f32, c_bf16);
    return;
  }
  // Fallback: the operands are bf16 values, so fp32 products are exact; they are summed by one
  // dot product per output in an order fixed by k alone. Unlike a BLAS sgemm (whose result for a
  // row depends on how many rows share the call and where the row sits in it) this makes a row's
  // result independent of the batch: bf16 rounding would turn such last-bit differences into
  // routing flips that depend on the rank count.
  float* af = grow(a_f_, m * k);
  bf16_to_f32(a, m * k, af);
  float* c = c_f32 != nullptr ? c_f32 : grow(out_f_, m * n);
  const int64_t block =
      std::clamp<int64_t>(kFallbackBlockBytes / (k * static_cast<int64_t>(sizeof(float))), 1, n);
  float* wf = grow(w_f_, block * k);
  for (int64_t o0 = 0; o0 < n; o0 += block) {
    const int64_t nb = std::min(block, n - o0);
    if (w.is_e4m3()) {
      bf16* wb = grow(w_b_, nb * k);
      weight_rows_to_bf16(w, k, o0, nb, wb);
      bf16_to_f32(wb, nb * k, wf);
    } else {
      bf16_to_f32(w.bf16_data() + o0 * k, nb * k, wf);
    }
    for (int64_t r = 0; r < m; r += 2) {
      const float* a0 = af + r * k;
      const float* a1 = r + 1 < m ? a0 + k : a0;
      for (int64_t o = 0; o < nb; o += 4) {
        const float* w4[4];
        for (int j = 0; j < 4; ++j) w4[j] = wf + std::min(o + j, nb - 1) * k;
        float d[8];
        dot_2x4(a0, a1, w4, k, d);
        for (int j = 0; j < 4 && o + j < nb; ++j) {
          c[r * n + o0 + o + j] = d[2 * j];
          if (r + 1 < m) c[(r + 1) * n + o0 + o + j] = d[2 * j + 1];
        }
      }
    }
  }
  if (c_f32 == nullptr) f32_to_bf16(c, m * n, c_bf16);
}

void Bf16Ops::gemm_e4m3_blocks(const bf16* a, WeightView w, int64_t m, int64_t n, int64_t k,
                               float* c_f32, bf16* c_bf16) {
  // Blocks of W rows dequantised to bf16, each multiplied by oneDNN into a [mp, nb] block of C
  // that is then copied into its columns: the same products and sums as on a bf16 copy of W.
  const int64_t mp = padded(m);
  int64_t block = kDequantBlockBytes / (k * static_cast<int64_t>(sizeof(bf16)));
  block = std::min(std::max<int64_t>(16, block / 16 * 16), n);
  bf16* wb = grow(w_b_, block * k);
  const size_t elem = c_f32 != nullptr ? sizeof(float) : sizeof(bf16);
  c_block_.resize(static_cast<size_t>(mp * block) * elem);
  for (int64_t o0 = 0; o0 < n; o0 += block) {
    const int64_t nb = std::min(block, n - o0);
    weight_rows_to_bf16(w, k, o0, nb, wb);
    onednn_->run(a, wb, m, nb, k, c_block_.data(), c_f32 == nullptr);
    auto* dst = reinterpret_cast<unsigned char*>(c_f32 != nullptr ? static_cast<void*>(c_f32)
                                                                  : static_cast<void*>(c_bf16));
    for (int64_t r = 0; r < mp; ++r) {
      std::memcpy(dst + static_cast<size_t>(r * n + o0) * elem,
                  c_block_.data() + static_cast<size_t>(r * nb) * elem,
                  static_cast<size_t>(nb) * elem);
    }
  }
}

void Bf16Ops::linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out,
                     float* y) {
  static_assert(rounding::kLinearInput && !rounding::kLinearOutput);
  if (rows <= 0 || out <= 0) return;
  if (in <= 0) {
    std::fill(y, y + rows * out, 0.0f);
    return;
  }
  const int64_t mp = padded(rows);
  bf16* xb = grow(x_b_, mp * in);
  to_bf16_padded(x, rows, mp, in, xb);
  if (mp == rows) {
    gemm(xb, w, rows, out, in, y, nullptr);
    return;
  }
  float* yp = grow(gate_f_, mp * out);
  gemm(xb, w, rows, out, in, yp, nullptr);
  std::memcpy(y, yp, sizeof(float) * static_cast<size_t>(rows * out));
}

void Bf16Ops::swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden,
                         int64_t inter, float* y) {
  constexpr rounding::SwigluRounding r = rounding::kDenseSwiglu;
  static_assert(r.input && !r.gate_up && r.activation && !r.output);
  if (rows <= 0) return;
  MOE_CHECK(w.gate.data != nullptr && w.up.data != nullptr && w.down.data != nullptr,
            "swiglu_mlp: missing gate/up/down weights");
  const int64_t mp = padded(rows);
  bf16* xb = grow(x_b_, mp * hidden);       // [mp, hidden]
  float* gate = grow(gate_f_, mp * inter);  // [mp, inter]
  float* up = grow(up_f_, mp * inter);      // [mp, inter]
  bf16* act = grow(act_b_, mp * inter);     // [mp, inter]
  to_bf16_padded(x, rows, mp, hidden, xb);
  gemm(xb, w.gate, rows, inter, hidden, gate, nullptr);
  gemm(xb, w.up, rows, inter, hidden, up, nullptr);
  silu_mul(gate, up, rows * inter, gate);
  to_bf16_padded(gate, rows, mp, inter, act);
  if (mp == rows) {
    gemm(act, w.down, rows, hidden, inter, y, nullptr);
    return;
  }
  float* yp = grow(up_f_, mp * hidden);
  gemm(act, w.down, rows, hidden, inter, yp, nullptr);
  std::memcpy(y, yp, sizeof(float) * static_cast<size_t>(rows * hidden));
}

void Bf16Ops::grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter,
                                    const ExpertGroup* groups, int64_t num_groups,
                                    const int32_t* row_index, float* out, const bf16* x_bf16,
                                    bf16* out_bf16) {
  constexpr rounding::SwigluRounding r = rounding::kGroupedSwiglu;
  static_assert(r.input && r.gate_up && r.activation && r.output);
  for (int64_t gi = 0; gi < num_groups; ++gi) {
    const ExpertGroup& g = groups[gi];
    MOE_CHECK(g.begin >= 0 && g.count >= 0, "grouped_expert_swiglu: group {} has begin {} count {}",
              gi, g.begin, g.count);
    MOE_CHECK(g.count == 0 || (g.weights.gate.data && g.weights.up.data && g.weights.down.data),
              "grouped_expert_swiglu: group {} has no weights", gi);
    for (int64_t p = g.begin; p < g.begin + g.count; ++p) {
      MOE_CHECK(row_index[p] >= 0, "grouped_expert_swiglu: negative row index {} at {}",
                row_index[p], p);
    }
  }
  // One GEMM per projection and group: the group's rows gathered (as bf16: rounded from x, or
  // copied from x_bf16) into one block.
  for (int64_t gi = 0; gi < num_groups; ++gi) {
    const ExpertGroup& g = groups[gi];
    if (g.count == 0) continue;
    const int64_t m = g.count, mp = padded(m);
    bf16* xb = grow(x_b_, mp * hidden);       // [mp, hidden]
    bf16* gate = grow(gate_b_, mp * inter);   // [mp, inter]
    bf16* up = grow(up_b_, mp * inter);       // [mp, inter]
    bf16* act = grow(act_b_, mp * inter);     // [mp, inter]
    bf16* down = grow(down_b_, mp * hidden);  // [mp, hidden]
    for (int64_t i = 0; i < m; ++i) {
      const int64_t at = static_cast<int64_t>(row_index[g.begin + i]) * hidden;
      if (x_bf16 != nullptr) {
        std::memcpy(static_cast<void*>(xb + i * hidden), x_bf16 + at,
                    sizeof(bf16) * static_cast<size_t>(hidden));
      } else {
        f32_to_bf16(x + at, hidden, xb + i * hidden);
      }
    }
    std::memset(static_cast<void*>(xb + m * hidden), 0,
                sizeof(bf16) * static_cast<size_t>((mp - m) * hidden));
    gemm(xb, g.weights.gate, m, inter, hidden, nullptr, gate);
    gemm(xb, g.weights.up, m, inter, hidden, nullptr, up);
    float* gf = grow(gate_f_, m * inter);
    float* uf = grow(up_f_, m * inter);
    bf16_to_f32(gate, m * inter, gf);
    bf16_to_f32(up, m * inter, uf);
    silu_mul(gf, uf, m * inter, gf);
    to_bf16_padded(gf, m, mp, inter, act);
    gemm(act, g.weights.down, m, hidden, inter, nullptr, down);
    if (out_bf16 != nullptr) {
      std::memcpy(static_cast<void*>(out_bf16 + g.begin * hidden), down,
                  sizeof(bf16) * static_cast<size_t>(m * hidden));
    } else {
      bf16_to_f32(down, m * hidden, out + g.begin * hidden);
    }
  }
}

void Bf16Ops::attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
                        int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) {
  static_assert(rounding::kKvCacheAppend);
  // k and v rounded before cpu::attention appends them: the cache then holds what a bf16 cache
  // would, widened to fp32, and every read of a key or value sees the rounded value.
  int64_t rows = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    rows = std::max(rows, seqs[s].row_begin + std::max<int64_t>(seqs[s].num_new, 0));
  }
  const int64_t kv_width = shape.num_kv_heads * shape.head_dim;
  float* kr = grow(k_f_, rows * kv_width);
  float* vr = grow(v_f_, rows * kv_width);
  round_rows(k, rows * kv_width, x_b_, kr);
  round_rows(v, rows * kv_width, x_b_, vr);
  cpu::attention(q, kr, vr, seqs, num_seqs, shape, cache, out);
}

}  // namespace moe::kernels::cpu
