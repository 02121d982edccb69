// bf16_rows.h. The portable loops are the scalar conversions of kernels/cuda/device_math.h; the
// conversions multiply nothing, and the weighted sums round each product (no FMA contraction),
// so no clone and no path changes a bit.
#include "kernels/bf16_rows.h"

#include "kernels/cuda/device_math.h"
#include "kernels/host_simd.h"

// The weighted sums multiply and add: those functions keep each product's rounding
// (MOE_CLONES_AVX512_EXACT, MOE_NO_CONTRACT: host_simd.h). The AVX512-BF16 path is GCC's.
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOE_HAVE_AVX512_BF16_PATH 1
#include <immintrin.h>
#endif

namespace moe::kernels {
namespace {

MOE_CLONES_AVX512 void narrow_portable(const float* __restrict src, int64_t n,
                                       uint16_t* __restrict dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = cuda::f32_to_bf16_bits(src[i]);
}

MOE_CLONES_AVX512 void round_portable(const float* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = cuda::bf16_bits_to_f32(cuda::f32_to_bf16_bits(src[i]));
}

// weighted_sum_bf16 on columns [c0, c1), a block of columns at a time (the block's sums stay in
// L1, each term's pass over them vectorises).
MOE_CLONES_AVX512_EXACT void weighted_sum_portable(WeightedRows terms, int64_t c0, int64_t c1,
                                                   SumTo to, float* __restrict out,
                                                   const float* __restrict acc,
                                                   uint16_t* __restrict bits) {
  constexpr int64_t kBlock = 256;
  float s[kBlock];
  for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
    const int64_t m = c1 - b0 < kBlock ? c1 - b0 : kBlock;
    if (terms.count == 0) {
      for (int64_t i = 0; i < m; ++i) s[i] = 0.0f;
    }
    for (int32_t j = 0; j < terms.count; ++j) {
      const uint16_t* __restrict e = terms.rows[j] + b0;
      const float w = terms.weights[j];
      if (j == 0) {
        for (int64_t i = 0; i < m; ++i) s[i] = w * cuda::bf16_bits_to_f32(e[i]);
      } else {
        for (int64_t i = 0; i < m; ++i) s[i] = s[i] + w * cuda::bf16_bits_to_f32(e[i]);
      }
    }
    switch (to) {
      case SumTo::kStore:
        for (int64_t i = 0; i < m; ++i) out[b0 + i] = s[i];
        break;
      case SumTo::kAdd:
        for (int64_t i = 0; i < m; ++i) out[b0 + i] = out[b0 + i] + s[i];
        break;
      case SumTo::kAddSum:
        for (int64_t i = 0; i < m; ++i) out[b0 + i] = out[b0 + i] + (acc[b0 + i] + s[i]);
        break;
      case SumTo::kNarrow:
        for (int64_t i = 0; i < m; ++i) bits[b0 + i] = cuda::f32_to_bf16_bits(s[i]);
        break;
    }
  }
}

#ifdef MOE_HAVE_AVX512_BF16_PATH
#define MOE_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// v as 16 bf16, or false when an element is subnormal (the instruction would give a zero where
// float_to_bf16 keeps a bf16 subnormal).
MOE_BF16_TARGET inline bool narrow16(__m512 v, __m256i& out) {
  const __m512i u = _mm512_castps_si512(v);
  const __mmask16 zero_exponent = _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
  if (_mm512_mask_test_epi32_mask(zero_exponent, u, _mm512_set1_epi32(0x007fffff)) != 0)
    return false;
  out = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  return true;
}
MOE_BF16_TARGET inline bool narrow16(const float* src, __m256i& out) {
  return narrow16(_mm512_loadu_ps(src), out);
}

// 32 columns at a time, their sums in two registers across the terms.
MOE_BF16_TARGET MOE_NO_CONTRACT void weighted_sum_avx512_bf16(WeightedRows terms, int64_t n,
                                                              SumTo to, float* out,
                                                              const float* acc, uint16_t* bits) {
  const __mmask16 all = 0xffff;
  auto widen16 = [&](__m256i b) {
    return _mm512_castsi512_ps(
        _mm512_maskz_slli_epi32(all, _mm512_maskz_cvtepu16_epi32(all, b), 16));
  };
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    __m512 s[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int32_t j = 0; j < terms.count; ++j) {
      const __m512 w = _mm512_set1_ps(terms.weights[j]);
      const uint16_t* e = terms.rows[j] + c;
      for (int h = 0; h < 2; ++h) {
        const __m512 p = _mm512_mul_ps(
            w, widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + 16 * h))));
        s[h] = j == 0 ? p : _mm512_add_ps(s[h], p);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const int64_t at = c + 16 * h;
      switch (to) {
        case SumTo::kStore:
          _mm512_storeu_ps(out + at, s[h]);
          break;
        case SumTo::kAdd:
          _mm512_storeu_ps(out + at, _mm512_add_ps(_mm512_loadu_ps(out + at), s[h]));
          break;
        case SumTo::kAddSum:
          _mm512_storeu_ps(out + at, _mm512_add_ps(_mm512_loadu_ps(out + at),
                                                   _mm512_add_ps(_mm512_loadu_ps(acc + at), s[h])));
          break;
        case SumTo::kNarrow: {
          __m256i b;
          if (narrow16(s[h], b)) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits + at), b);
          } else {
            weighted_sum_portable(terms, at, at + 16, to, out, acc, bits);
          }
          break;
        }
      }
    }
  }
  weighted_sum_portable(terms, c, n, to, out, acc, bits);
}

MOE_BF16_TARGET void narrow_avx512_bf16(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i b;
    if (narrow16(src + i, b)) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), b);
    } else {
      narrow_portable(src + i, 16, dst + i);
    }
  }
  narrow_portable(src + i, n - i, dst + i);
}

MOE_BF16_TARGET void round_avx512_bf16(const float* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i b;
    if (narrow16(src + i, b)) {
      // The masked forms: GCC 12 warns on the unmasked ones' undefined source operand.
      const __mmask16 all = 0xffff;
      _mm512_storeu_si512(dst + i,
                          _mm512_maskz_slli_epi32(all, _mm512_maskz_cvtepu16_epi32(all, b), 16));
    } else {
      round_portable(src + i, 16, dst + i);
    }
  }
  round_portable(src + i, n - i, dst + i);
}

bool has_avx512_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512bf16") != 0;
  return yes;
}
#endif

}  // namespace

// The AVX512-BF16 path where the CPU has it (then return), else on to the portable loop.
#ifdef MOE_HAVE_AVX512_BF16_PATH
#define MOE_AVX512_BF16_FIRST(call) \
  if (has_avx512_bf16()) return call
#else
#define MOE_AVX512_BF16_FIRST(call)
#endif

void narrow_bf16(const float* src, int64_t n, uint16_t* dst) {
  MOE_AVX512_BF16_FIRST(narrow_avx512_bf16(src, n, dst));
  narrow_portable(src, n, dst);
}

void round_bf16(const float* src, int64_t n, float* dst) {
  MOE_AVX512_BF16_FIRST(round_avx512_bf16(src, n, dst));
  round_portable(src, n, dst);
}

void weighted_sum_bf16(WeightedRows terms, int64_t n, SumTo to, float* out, const float* acc,
                       uint16_t* bits) {
  MOE_AVX512_BF16_FIRST(weighted_sum_avx512_bf16(terms, n, to, out, acc, bits));
  weighted_sum_portable(terms, 0, n, to, out, acc, bits);
}

MOE_CLONES_AVX512 void widen_bf16(const uint16_t* __restrict src, int64_t n, bool add,
                                  float* __restrict dst) {
  if (add) {
    for (int64_t i = 0; i < n; ++i) dst[i] = dst[i] + cuda::bf16_bits_to_f32(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = cuda::bf16_bits_to_f32(src[i]);
  }
}

}  // namespace moe::kernels
