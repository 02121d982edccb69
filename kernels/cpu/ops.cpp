// Fast CPU ops of kernels/cpu/ops.h: fp32 activations, bf16 or e4m3 weights, fp32 accumulation.
// Invariants: weights are never converted as a whole (only cache-sized blocks or single rows,
// into thread_local scratch that only grows; weight_rows.h); every op is a no-op on zero rows;
// argument checks (shapes, ids, indices, cache bounds) run before anything is written, so a call
// that throws on them leaves its outputs and the KV cache untouched.
#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/bf16_rows.h"
#include "kernels/common/check.h"
#include "kernels/cpu/weight_rows.h"
#include "kernels/host_simd.h"

// The loops that stream weights get an AVX2+FMA clone (host_simd.h), so decode speed does not
// depend on -march=native.

namespace moe::kernels::cpu {
namespace {

// Below this many rows, linear() computes straight from bf16 (no block conversion) unless the
// BLAS has a direct small-GEMM path: the conversion of W costs about a GEMM of this many rows.
constexpr int64_t kLinearGemmMinRows = 4;
// Size of one converted fp32 block of W; sized so block + packed panels stay in L2.
constexpr int64_t kLinearBlockBytes = 512 * 1024;
// OpenBLAS's "small matrix" sgemm (no packing) takes calls with M*N*K up to this volume.
constexpr int64_t kDirectGemmMaxVolume = 1000000;
// Below this reduction length the regular (packing) sgemm path is as fast as the direct one.
constexpr int64_t kDirectGemmMinIn = 512;
// Attention: sequences with at least this many new tokens use per-head GEMMs.
constexpr int64_t kAttentionGemmMinRows = 8;
// Query rows per attention GEMM block (bounds the score scratch to kAttentionQueryBlock x keys).
constexpr int64_t kAttentionQueryBlock = 64;
// Independent partial sums per dot product: enough vector accumulators to hide FMA latency.
constexpr int kLanes = 32;

inline float bf16_bits_to_f32(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// Grows (never shrinks) a thread_local scratch vector and returns its data.
inline float* scratch(std::vector<float>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// True when cblas_sgemm runs small calls (M*N*K <= kDirectGemmMaxVolume) through OpenBLAS's
// direct "small matrix" kernel: OpenBLAS >= 0.3.17 on its AVX-512 cores, single-threaded.
// Why it matters: the regular path packs our transposed B (W [out, in]) slowly for long rows;
// measured on 0.3.21/Cooperlake, M = 8..64, K = 1024: 21-71 GFLOP/s as one call, 96-106 when
// cut into column chunks that the direct kernel takes. With more BLAS threads the regular path
// wins back by running threaded, so chunking is only used at one thread.
bool blas_has_direct_small_gemm() {
  static const bool has = [] {
    int major = 0, minor = 0, patch = 0;
    const char* config = openblas_get_config();
    if (config == nullptr ||
        std::sscanf(config, "OpenBLAS %d.%d.%d", &major, &minor, &patch) != 3) {
      return false;
    }
    if (major == 0 && (minor < 3 || (minor == 3 && patch < 17))) return false;
    std::string core = openblas_get_corename() ? openblas_get_corename() : "";
    for (char& c : core) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return core == "skylakex" || core == "cooperlake" || core == "sapphirerapids";
  }();
  return has && openblas_get_num_threads() == 1;
}

void check_blas_dim(int64_t v, const char* what) {
  MOE_CHECK(v >= 0 && v <= INT_MAX, "{} = {} does not fit a BLAS int", what, v);
}

MOE_CLONES_AVX2 float dot_bf16(const float* x, const bf16* w, int64_t n) {
  const uint16_t* wb = reinterpret_cast<const uint16_t*>(w);
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * bf16_bits_to_f32(wb[i + j]);
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += x[i] * bf16_bits_to_f32(wb[i]);
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s + tail;
}

MOE_CLONES_AVX2 float dot_f32(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s + tail;
}

MOE_CLONES_AVX2 void axpy(float a, const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// y [rows, out] for small rows: each W row is converted once into an L1-resident fp32 row and
// dotted with every x row (one row straight from bf16, or e4m3 through dot_e4m3_row).
void linear_small_rows(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out,
                       float* y) {
  if (rows == 1 && !w.is_e4m3()) {
    for (int64_t o = 0; o < out; ++o) y[o] = dot_bf16(x, w.bf16_data() + o * in, in);
    return;
  }
  if (rows == 1) {
    for (int64_t o = 0; o < out; ++o) y[o] = dot_e4m3_row(x, w, in, o);
    return;
  }
  thread_local std::vector<float> row_buf;
  float* wf = scratch(row_buf, in);
  for (int64_t o = 0; o < out; ++o) {
    weight_rows_to_f32(w, in, o, 1, wf);
    for (int64_t r = 0; r < rows; ++r) y[r * out + o] = dot_f32(x + r * in, wf, in);
  }
}

// exp(x) in fp32 within ~2 ulp (Cephes expf: x = n ln2 + r, degree-6 polynomial for e^r, times
// 2^n built from bits). Plain arithmetic only, so loops over it vectorise; scalar expf would
// dominate long-prefill attention. Results below e^-88 flush to 0; NaN stays NaN.
inline float exp_approx(float x) {
  // Clamp |x| to 88 with integer selects: GCC will not if-convert float compares under the
  // default -ftrapping-math, which would keep the loop scalar. NaN is left alone.
  constexpr uint32_t kBits88 = 0x42b00000u;  // 88.0f
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint32_t mag = u & 0x7fffffffu;
  const bool clamp = mag > kBits88 && mag <= 0x7f800000u;
  x = std::bit_cast<float>(clamp ? ((u & 0x80000000u) | kBits88) : u);
  // Round x / ln2 to an integer n with the 1.5 * 2^23 trick (no float->int conversion).
  constexpr float kRound = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  float r = x - n * 0.693359375f;  // ln2 split in two for an exact reduction
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // The low mantissa bits of `shifted` hold n in two's complement: 2^n = (n + 127) << 23.
  const uint32_t scale_bits = (std::bit_cast<uint32_t>(shifted) + 127u) << 23;
  return p * std::bit_cast<float>(scale_bits);
}

// In-place softmax of row[0..n) in fp32 (max subtracted); the row then sums to 1.
MOE_CLONES_AVX2 void softmax_inplace(float* row, int64_t n) {
  // Max through order-preserving integer keys (vectorises, unlike a float compare reduction).
  int32_t m_key = INT32_MIN;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t i = std::bit_cast<int32_t>(row[j]);
    const int32_t key = i ^ ((i >> 31) & 0x7fffffff);
    m_key = key > m_key ? key : m_key;
  }
  const float m = std::bit_cast<float>(m_key ^ ((m_key >> 31) & 0x7fffffff));
  for (int64_t j = 0; j < n; ++j) row[j] = exp_approx(row[j] - m);
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += row[j + l];
  }
  float sum = 0.0f;
  for (; j < n; ++j) sum += row[j];
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) row[i] *= inv;
}

}  // namespace

void bf16_to_f32(const bf16* src, int64_t n, float* dst) {
  widen_bf16(reinterpret_cast<const uint16_t*>(src), n, false, dst);
}

void f32_to_bf16(const float* src, int64_t n, bf16* dst) {
  narrow_bf16(src, n, reinterpret_cast<uint16_t*>(dst));
}

void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
               float* out) {
  for (int64_t t = 0; t < n; ++t) {
    MOE_CHECK(ids[t] >= 0 && ids[t] < vocab,
              "embedding: token id {} (position {}) is outside the vocabulary [0, {})", ids[t], t,
              vocab);
  }
  for (int64_t t = 0; t < n; ++t) bf16_to_f32(table + ids[t] * hidden, hidden, out + t * hidden);
}

void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps, float* y) {
  if (rows <= 0) return;
  MOE_CHECK(dim > 0, "rmsnorm: dim must be positive, got {}", dim);
  thread_local std::vector<float> w_buf;
  float* wf = scratch(w_buf, dim);
  bf16_to_f32(w, dim, wf);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    const float mean_sq = dot_f32(xr, xr, dim) / static_cast<float>(dim);
    const float inv_rms = 1.0f / std::sqrt(mean_sq + eps);
    // HF order: (x * rsqrt(...)) first, then times the weight.
    for (int64_t j = 0; j < dim; ++j) yr[j] = wf[j] * (xr[j] * inv_rms);
  }
}

void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y) {
  if (rows <= 0 || out <= 0) return;
  if (in <= 0) {
    std::fill(y, y + rows * out, 0.0f);
    return;
  }
  if (rows == 1) {
    linear_small_rows(x, w, rows, in, out, y);
    return;
  }
  const bool direct = blas_has_direct_small_gemm();
  if (!direct && rows < kLinearGemmMinRows) {
    linear_small_rows(x, w, rows, in, out, y);
    return;
  }
  check_blas_dim(rows, "linear rows");
  check_blas_dim(in, "linear in");
  check_blas_dim(out, "linear out");
  // Output rows of W per block: a multiple of 16 (GEMM micro-panel friendly), at least 16.
  int64_t block = kLinearBlockBytes / (in * static_cast<int64_t>(sizeof(float)));
  block = std::max<int64_t>(16, block / 16 * 16);
  block = std::min(block, out);
  // Columns per sgemm call: the whole block, or chunks small enough for the direct kernel.
  int64_t chunk = block;
  if (direct && in >= kDirectGemmMinIn) {
    const int64_t fit = kDirectGemmMaxVolume / (rows * in) / 8 * 8;
    if (fit >= 8) chunk = std::min(block, fit);
  }
  thread_local std::vector<float> w_buf;
  float* wf = scratch(w_buf, block * in);
  for (int64_t o0 = 0; o0 < out; o0 += block) {
    const int64_t nb = std::min(block, out - o0);
    weight_rows_to_f32(w, in, o0, nb, wf);
    for (int64_t c0 = 0; c0 < nb; c0 += chunk) {
      const int64_t nc = std::min(chunk, nb - c0);
      // y[:, o0+c0 : o0+c0+nc] = x [rows, in] . wf[c0:c0+nc, in]^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows),
                  static_cast<int>(nc), static_cast<int>(in), 1.0f, x, static_cast<int>(in),
                  wf + c0 * in, static_cast<int>(in), 0.0f, y + o0 + c0, static_cast<int>(out));
    }
  }
}

void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
          double theta) {
  if (rows <= 0 || heads <= 0) return;
  MOE_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even and positive, got {}",
            head_dim);
  const int64_t half = head_dim / 2;
  // inv_freq and angles in float32 exactly as HF computes them, so long positions round alike.
  thread_local std::vector<float> inv_buf, cos_buf, sin_buf;
  float* inv_freq = scratch(inv_buf, half);
  float* c = scratch(cos_buf, half);
  float* s = scratch(sin_buf, half);
  const float base = static_cast<float>(theta);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(base, exponent);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float pos = static_cast<float>(positions[r]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      c[i] = std::cos(angle);
      s[i] = std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (r * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i];
        const float b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
               int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out) {
  if (num_seqs <= 0) return;
  const int64_t num_heads = shape.num_heads;
  const int64_t num_kv = shape.num_kv_heads;
  const int64_t head_dim = shape.head_dim;
  MOE_CHECK(num_heads > 0 && num_kv > 0 && head_dim > 0,
            "attention: heads {}, kv heads {}, head_dim {} must all be positive", num_heads, num_kv,
            head_dim);
  MOE_CHECK(num_heads % num_kv == 0, "attention: num_heads {} is not a multiple of num_kv_heads {}",
            num_heads, num_kv);
  MOE_CHECK(cache.dtype == KvDtype::kF32, "attention: the CPU backend needs an fp32 KV cache");
  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& sq = seqs[s];
    MOE_CHECK(sq.num_new >= 0 && sq.past_len >= 0 && sq.row_begin >= 0,
              "attention: sequence {} has negative row_begin/num_new/past_len ({}, {}, {})", s,
              sq.row_begin, sq.num_new, sq.past_len);
    MOE_CHECK(sq.cache_slot >= 0 && sq.cache_slot < cache.num_slots,
              "attention: sequence {} uses cache slot {} outside [0, {})", s, sq.cache_slot,
              cache.num_slots);
    MOE_CHECK(sq.past_len + sq.num_new <= cache.max_len,
              "attention: sequence {} needs {} cache positions ({} past + {} new) but the cache "
              "holds {}",
              s, sq.past_len + sq.num_new, sq.past_len, sq.num_new, cache.max_len);
  }
  const int64_t group = num_heads / num_kv;
  const int64_t q_stride = num_heads * head_dim;
  const int64_t kv_stride = num_kv * head_dim;
  check_blas_dim(q_stride, "attention q width");
  check_blas_dim(cache.max_len, "attention cache max_len");
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  thread_local std::vector<float> score_buf;

  for (int64_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& sq = seqs[s];
    if (sq.num_new == 0) continue;
    float* k_cache = static_cast<float*>(cache.k) + sq.cache_slot * cache.max_len * kv_stride;
    float* v_cache = static_cast<float*>(cache.v) + sq.cache_slot * cache.max_len * kv_stride;
    for (int64_t i = 0; i < sq.num_new; ++i) {
      std::memcpy(k_cache + (sq.past_len + i) * kv_stride, k + (sq.row_begin + i) * kv_stride,
                  sizeof(float) * kv_stride);
      std::memcpy(v_cache + (sq.past_len + i) * kv_stride, v + (sq.row_begin + i) * kv_stride,
                  sizeof(float) * kv_stride);
    }
    const float* q_seq = q + sq.row_begin * q_stride;
    float* out_seq = out + sq.row_begin * q_stride;

    if (sq.num_new < kAttentionGemmMinRows) {
      // Decode-sized: one pass over the keys per (token, head), rows streamed contiguously.
      float* scores = scratch(score_buf, sq.past_len + sq.num_new);
      for (int64_t i = 0; i < sq.num_new; ++i) {
        const int64_t num_keys = sq.past_len + i + 1;
        for (int64_t h = 0; h < num_heads; ++h) {
          const int64_t g = h / group;
          const float* qh = q_seq + i * q_stride + h * head_dim;
          for (int64_t j = 0; j < num_keys; ++j) {
            scores[j] = scale * dot_f32(qh, k_cache + j * kv_stride + g * head_dim, head_dim);
          }
          softmax_inplace(scores, num_keys);
          float* oh = out_seq + i * q_stride + h * head_dim;
          std::fill(oh, oh + head_dim, 0.0f);
          for (int64_t j = 0; j < num_keys; ++j) {
            axpy(scores[j], v_cache + j * kv_stride + g * head_dim, head_dim, oh);
          }
        }
      }
      continue;
    }

    // Prefill-sized: per head and block of query rows, S = scale * Q K^T over the keys the
    // block can see, causal softmax per row (masked tail set to 0), then O = S V.
    const int64_t max_keys = sq.past_len + sq.num_new;
    float* scores = scratch(score_buf, kAttentionQueryBlock * max_keys);
    for (int64_t h = 0; h < num_heads; ++h) {
      const int64_t g = h / group;
      const float* kg = k_cache + g * head_dim;  // [keys, D], stride kv_stride
      const float* vg = v_cache + g * head_dim;
      for (int64_t i0 = 0; i0 < sq.num_new; i0 += kAttentionQueryBlock) {
        const int64_t nb = std::min(kAttentionQueryBlock, sq.num_new - i0);
        const int64_t num_keys = sq.past_len + i0 + nb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(nb),
                    static_cast<int>(num_keys), static_cast<int>(head_dim), scale,
                    q_seq + i0 * q_stride + h * head_dim, static_cast<int>(q_stride), kg,
                    static_cast<int>(kv_stride), 0.0f, scores, static_cast<int>(num_keys));
        for (int64_t r = 0; r < nb; ++r) {
          float* row = scores + r * num_keys;
          const int64_t visible = sq.past_len + i0 + r + 1;
          softmax_inplace(row, visible);
          std::fill(row + visible, row + num_keys, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(nb),
                    static_cast<int>(head_dim), static_cast<int>(num_keys), 1.0f, scores,
                    static_cast<int>(num_keys), vg, static_cast<int>(kv_stride), 0.0f,
                    out_seq + i0 * q_stride + h * head_dim, static_cast<int>(q_stride));
      }
    }
  }
}

void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                 int32_t* ids, float* weights) {
  if (rows <= 0) return;
  MOE_CHECK(experts > 0 && k >= 1 && k <= experts,
            "router_topk: top-k {} must be in [1, experts = {}]", k, experts);
  thread_local std::vector<float> prob_buf;
  float* probs = scratch(prob_buf, experts);
  thread_local std::vector<char> taken;
  taken.assign(static_cast<size_t>(experts), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* lr = logits + r * experts;
    std::copy(lr, lr + experts, probs);
    float m = probs[0];
    for (int64_t e = 1; e < experts; ++e) m = std::max(m, probs[e]);
    float sum = 0.0f;
    for (int64_t e = 0; e < experts; ++e) {
      probs[e] = std::exp(probs[e] - m);
      sum += probs[e];
    }
    MOE_CHECK(std::isfinite(sum) && sum > 0.0f,
              "router_topk: row {} has non-finite logits (softmax sum {})", r, sum);
    for (int64_t e = 0; e < experts; ++e) probs[e] /= sum;
    // k selection passes; strict '>' keeps the lower id on ties.
    int32_t* ir = ids + r * k;
    float* wr = weights + r * k;
    float picked_sum = 0.0f;
    for (int64_t t = 0; t < k; ++t) {
      int64_t best = -1;
      for (int64_t e = 0; e < experts; ++e) {
        if (!taken[e] && (best < 0 || probs[e] > probs[best])) best = e;
      }
      taken[best] = 1;
      ir[t] = static_cast<int32_t>(best);
      wr[t] = probs[best];
      picked_sum += probs[best];
    }
    for (int64_t t = 0; t < k; ++t) taken[ir[t]] = 0;
    if (renormalise) {
      for (int64_t t = 0; t < k; ++t) wr[t] /= picked_sum;
    }
  }
}

MOE_CLONES_AVX2 void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
  // exp_approx keeps this loop vectorised; for g < -88 it gives ~1e-36 instead of -0.
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + exp_approx(-g)) * up[i];
  }
}

void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                float* y) {
  if (rows <= 0) return;
  MOE_CHECK(w.gate.data != nullptr && w.up.data != nullptr && w.down.data != nullptr,
            "swiglu_mlp: missing gate/up/down weights");
  thread_local std::vector<float> gate_buf, up_buf;
  float* gate = scratch(gate_buf, rows * inter);  // [rows, inter]
  float* up = scratch(up_buf, rows * inter);      // [rows, inter]
  linear(x, w.gate, rows, hidden, inter, gate);
  linear(x, w.up, rows, hidden, inter, up);
  silu_mul(gate, up, rows * inter, gate);
  linear(gate, w.down, rows, inter, hidden, y);
}

void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter, const ExpertGroup* groups,
                           int64_t num_groups, const int32_t* row_index, float* out) {
  for (int64_t gi = 0; gi < num_groups; ++gi) {
    MOE_CHECK(groups[gi].begin >= 0 && groups[gi].count >= 0,
              "grouped_expert_swiglu: group {} has begin {} count {}", gi, groups[gi].begin,
              groups[gi].count);
  }
  thread_local std::vector<float> rows_buf;
  for (int64_t gi = 0; gi < num_groups; ++gi) {
    const ExpertGroup& g = groups[gi];
    if (g.count == 0) continue;
    float* xs = scratch(rows_buf, g.count * hidden);  // [count, hidden]
    gather_rows(x, hidden, row_index + g.begin, g.count, xs);
    swiglu_mlp(xs, g.weights, g.count, hidden, inter, out + g.begin * hidden);
  }
}

void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    MOE_CHECK(idx[i] >= 0, "gather_rows: negative row index {} at {}", idx[i], i);
  }
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(dst + i * width, src + static_cast<int64_t>(idx[i]) * width, sizeof(float) * width);
  }
}

}  // namespace moe::kernels::cpu
