// Naive reference ops (see reference.h): one output element at a time, double accumulation,
// no scratch reuse, no BLAS; e4m3 weights element by element through fp8.h's dequantise body. Slow
// on purpose; only tests and documentation use them.
#include "kernels/cpu/reference.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/common/check.h"

namespace moe::kernels::cpu::reference {
namespace {

float silu(float g) {
  return g / (1.0f + std::exp(-g));
}

// Element (r, c) of a weight matrix with `cols` columns, as fp32 (e4m3: fp8.h's dequantise body).
float weight_value(WeightView w, int64_t cols, int64_t r, int64_t c) {
  if (!w.is_e4m3()) return bf16_to_float(w.bf16_data()[r * cols + c]);
  return e4m3_matrix_value(w.codes(), w.scales, cols, r, c);
}

}  // namespace

void bf16_to_f32(const bf16* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i)
    dst[i] = std::bit_cast<float>(static_cast<uint32_t>(src[i].bits) << 16);
}

void f32_to_bf16(const float* src, int64_t n, bf16* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const float f = src[i];
    const uint32_t u = std::bit_cast<uint32_t>(f);
    if (std::isnan(f)) {
      dst[i].bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
      continue;
    }
    if (std::isinf(f)) {
      dst[i].bits = static_cast<uint16_t>(u >> 16);
      continue;
    }
    // The two bf16 values around f: `lo` drops the low 16 bits (towards zero), `hi` is the next
    // bf16 away from zero (may be inf, which then stands for 2^128 for the comparison).
    const uint32_t lo_bits = u & 0xffff0000u;
    const uint32_t hi_bits = lo_bits + 0x10000u;
    const double mag = std::fabs(static_cast<double>(f));
    const double lo = std::fabs(static_cast<double>(std::bit_cast<float>(lo_bits)));
    const uint32_t hi_mag_bits = hi_bits & 0x7fffffffu;
    const double hi = hi_mag_bits == 0x7f800000u
                          ? std::ldexp(1.0, 128)
                          : std::fabs(static_cast<double>(std::bit_cast<float>(hi_bits)));
    const double d_lo = mag - lo;  // exact: both are floats of nearby magnitude
    const double d_hi = hi - mag;
    bool take_hi;
    if (d_lo != d_hi) {
      take_hi = d_hi < d_lo;
    } else {
      take_hi = ((lo_bits >> 16) & 1u) != 0;  // tie: keep the even mantissa
    }
    dst[i].bits = static_cast<uint16_t>((take_hi ? hi_bits : lo_bits) >> 16);
  }
}

void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
               float* out) {
  for (int64_t t = 0; t < n; ++t) {
    MOE_CHECK(ids[t] >= 0 && ids[t] < vocab, "reference embedding: id {} outside [0, {})", ids[t],
              vocab);
    for (int64_t j = 0; j < hidden; ++j) {
      out[t * hidden + j] = bf16_to_float(table[ids[t] * hidden + j]);
    }
  }
}

void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    double sum_sq = 0.0;
    for (int64_t j = 0; j < dim; ++j)
      sum_sq += static_cast<double>(x[r * dim + j]) * x[r * dim + j];
    const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps);
    for (int64_t j = 0; j < dim; ++j) {
      y[r * dim + j] = static_cast<float>(x[r * dim + j] * inv_rms * bf16_to_float(w[j]));
    }
  }
}

void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int64_t i = 0; i < in; ++i) {
        acc += static_cast<double>(x[r * in + i]) * weight_value(w, in, o, i);
      }
      y[r * out + o] = static_cast<float>(acc);
    }
  }
}

void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
          double theta) {
  MOE_CHECK(head_dim % 2 == 0, "reference rope: odd head_dim {}", head_dim);
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float inv_freq =
            1.0f / std::pow(static_cast<float>(theta),
                            static_cast<float>(2 * i) / static_cast<float>(head_dim));
        const float angle = static_cast<float>(positions[r]) * inv_freq;
        const float c = std::cos(angle);
        const float s = std::sin(angle);
        // out = x * cos + rotate_half(x) * sin, rotate_half([a | b]) = [-b | a].
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * c + (-b) * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
               int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) {
  const int64_t H = shape.num_heads, KV = shape.num_kv_heads, D = shape.head_dim;
  MOE_CHECK(H > 0 && KV > 0 && D > 0 && H % KV == 0, "reference attention: bad shape");
  MOE_CHECK(cache.dtype == KvDtype::kF32, "reference attention: needs an fp32 KV cache");
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& sq = seqs[s];
    MOE_CHECK(sq.cache_slot >= 0 && sq.cache_slot < cache.num_slots &&
                  sq.past_len + sq.num_new <= cache.max_len,
              "reference attention: sequence {} does not fit the cache", s);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& sq = seqs[s];
    // cache element (slot, pos, kv head g, d)
    auto cache_at = [&](void* base, int64_t pos, int64_t g, int64_t d) -> float& {
      return static_cast<float*>(base)[((sq.cache_slot * cache.max_len + pos) * KV + g) * D + d];
    };
    for (int64_t i = 0; i < sq.num_new; ++i) {
      for (int64_t g = 0; g < KV; ++g) {
        for (int64_t d = 0; d < D; ++d) {
          cache_at(cache.k, sq.past_len + i, g, d) = k[((sq.row_begin + i) * KV + g) * D + d];
          cache_at(cache.v, sq.past_len + i, g, d) = v[((sq.row_begin + i) * KV + g) * D + d];
        }
      }
    }
    for (int64_t i = 0; i < sq.num_new; ++i) {
      const int64_t pos = sq.past_len + i;
      const int64_t row = sq.row_begin + i;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / (H / KV);
        std::vector<double> score(static_cast<size_t>(pos + 1));
        for (int64_t j = 0; j <= pos; ++j) {
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            dot += static_cast<double>(q[(row * H + h) * D + d]) * cache_at(cache.k, j, g, d);
          }
          score[j] = dot * scale;
        }
        const double m = *std::max_element(score.begin(), score.end());
        double sum = 0.0;
        for (double& sc : score) {
          sc = std::exp(sc - m);
          sum += sc;
        }
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j <= pos; ++j) acc += score[j] / sum * cache_at(cache.v, j, g, d);
          out[(row * H + h) * D + d] = static_cast<float>(acc);
        }
      }
    }
  }
}

void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                 int32_t* ids, float* weights) {
  MOE_CHECK(k >= 1 && k <= experts, "reference router: k {} experts {}", k, experts);
  for (int64_t r = 0; r < rows; ++r) {
    const float* lr = logits + r * experts;
    const float m = *std::max_element(lr, lr + experts);
    std::vector<float> probs(static_cast<size_t>(experts));
    double sum = 0.0;
    for (int64_t e = 0; e < experts; ++e) {
      probs[e] = std::exp(lr[e] - m);
      sum += probs[e];
    }
    for (float& p : probs) p = static_cast<float>(p / sum);
    // Stable sort by descending probability: equal probabilities keep ascending expert ids.
    std::vector<int32_t> order(static_cast<size_t>(experts));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
    double picked = 0.0;
    for (int64_t t = 0; t < k; ++t) picked += probs[order[t]];
    for (int64_t t = 0; t < k; ++t) {
      ids[r * k + t] = order[t];
      weights[r * k + t] =
          renormalise ? static_cast<float>(probs[order[t]] / picked) : probs[order[t]];
    }
  }
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = silu(gate[i]) * up[i];
}

void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                float* y) {
  std::vector<float> gate(static_cast<size_t>(inter)), up(static_cast<size_t>(inter));
  std::vector<float> act(static_cast<size_t>(inter));
  for (int64_t r = 0; r < rows; ++r) {
    linear(x + r * hidden, w.gate, 1, hidden, inter, gate.data());
    linear(x + r * hidden, w.up, 1, hidden, inter, up.data());
    silu_mul(gate.data(), up.data(), inter, act.data());
    linear(act.data(), w.down, 1, inter, hidden, y + r * hidden);
  }
}

void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter, const ExpertGroup* groups,
                           int64_t num_groups, const int32_t* row_index, float* out) {
  for (int64_t g = 0; g < num_groups; ++g) {
    for (int64_t p = groups[g].begin; p < groups[g].begin + groups[g].count; ++p) {
      swiglu_mlp(x + static_cast<int64_t>(row_index[p]) * hidden, groups[g].weights, 1, hidden,
                 inter, out + p * hidden);
    }
  }
}

void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] + y[i];
}

void weighted_row_sum(const float* src, int64_t width, const int32_t* src_index,
                      const float* weights, const int64_t* offsets, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < width; ++c) {
      float acc = 0.0f;
      for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j) {
        acc += (weights ? weights[j] : 1.0f) * src[src_index[j] * width + c];
      }
      dst[i * width + c] = acc;
    }
  }
}

void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < width; ++j) dst[i * width + j] = src[idx[i] * width + j];
  }
}

}  // namespace moe::kernels::cpu::reference
