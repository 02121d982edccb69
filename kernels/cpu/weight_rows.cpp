// weight_rows.h. The e4m3 rows take an AVX2 + F16C path (the one-row dot also an AVX-512 one)
// where the CPU has it: a code's bits shifted into an fp16 (sign, then the 7 exponent-and-mantissa
// bits at the fp16 exponent's low end) are exactly its value times 2^-8, subnormal codes included
// (an fp16 subnormal), and vcvtph2ps widens them exactly; the block scale times 2^8 (exact) then
// gives the one rounding e4m3_dequantise does. Codes that are NaN (0x7F, 0xFF) take the scalar
// body.
#include "kernels/cpu/weight_rows.h"

#include <algorithm>
#include <vector>

#include "kernels/common/fp8.h"
#include "kernels/cpu/ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOE_HAVE_X86_FP8_PATH 1
#endif

namespace moe::kernels::cpu {
namespace {

// Scales above this would overflow when multiplied by 2^8 (real blocks are near 1e-3).
constexpr float kVectorMaxScale = 1e36f;
// Columns per step of the vector path: one 16-byte load of codes.
constexpr int64_t kCodesPerStep = 16;

void e4m3_row_scalar(const uint8_t* q, const float* srow, int64_t c0, int64_t n, float* out) {
  for (int64_t c = c0; c < c0 + n; ++c) out[c - c0] = e4m3_dequantise(q[c], srow[c / kFp8Block]);
}

#ifdef MOE_HAVE_X86_FP8_PATH
bool cpu_has_fp8_path() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}

// Columns [c0, c0 + n) of one block (same scale s) of an e4m3 row, 16 at a time.
__attribute__((target("avx2,f16c"))) void e4m3_block_avx2(const uint8_t* q, float s, int64_t c0,
                                                          int64_t n, float* out) {
  const __m256 scale = _mm256_set1_ps(s * 256.0f);
  const __m256i keep = _mm256_set1_epi16(static_cast<short>(0xBFFF));
  const __m128i nan_mag = _mm_set1_epi8(0x7F);
  int64_t i = 0;
  for (; i + kCodesPerStep <= n; i += kCodesPerStep) {
    const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + c0 + i));
    const __m128i mag = _mm_and_si128(codes, nan_mag);
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(mag, nan_mag)) != 0) {
      for (int64_t j = i; j < i + kCodesPerStep; ++j) out[j] = e4m3_dequantise(q[c0 + j], s);
      continue;
    }
    // u16 lane = code << 8, arithmetic >> 1 (sign lands in bits 15 and 14), bit 14 cleared.
    __m256i h = _mm256_cvtepu8_epi16(codes);
    h = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(h, 8), 1), keep);
    const __m256 lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    const __m256 hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(lo, scale));
    _mm256_storeu_ps(out + i + 8, _mm256_mul_ps(hi, scale));
  }
  for (; i < n; ++i) out[i] = e4m3_dequantise(q[c0 + i], s);
}

// x . codes over `blocks` whole 128-column blocks with scales (all within kVectorMaxScale):
// per block, code values x 2^-8 (exact, as above) times x summed in registers, then scaled once
// by the block's scale x 2^8. A NaN code makes the sum NaN.
__attribute__((target("avx2,f16c,fma"))) float blocks_dot_avx2(const float* x, const uint8_t* q,
                                                               const float* scales,
                                                               int64_t blocks) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i keep = _mm_set1_epi16(static_cast<short>(0xBFFF));
  const __m128i nan_mag = _mm_set1_epi8(0x7F);
  __m256 total = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b, x += kFp8Block, q += kFp8Block) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < kFp8Block; i += kCodesPerStep) {
      const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i));
      if (_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_and_si128(codes, nan_mag), nan_mag)) != 0) {
        a0 = _mm256_set1_ps(__builtin_nanf(""));
      }
      // u16 lane = code << 8 (unpacked into the high byte), arithmetic >> 1, bit 14 cleared.
      const __m128i lo = _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(zero, codes), 1), keep);
      const __m128i hi = _mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(zero, codes), 1), keep);
      a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(lo), _mm256_loadu_ps(x + i), a0);
      a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(hi), _mm256_loadu_ps(x + i + 8), a1);
    }
    total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(scales[b] * 256.0f), total);
  }
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
  const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

// blocks_dot_avx2 with 512-bit registers: 32 codes per step.
__attribute__((target("avx512f,avx512bw,f16c,fma"))) float blocks_dot_avx512(const float* x,
                                                                             const uint8_t* q,
                                                                             const float* scales,
                                                                             int64_t blocks) {
  const __m512i keep = _mm512_set1_epi16(static_cast<short>(0xBFFF));
  const __m256i nan_mag = _mm256_set1_epi8(0x7F);
  __m512 total = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b, x += kFp8Block, q += kFp8Block) {
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t i = 0; i < kFp8Block; i += 2 * kCodesPerStep) {
      const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i));
      const bool nan =
          _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(codes, nan_mag), nan_mag)) != 0;
      const __m512i h = _mm512_and_si512(
          _mm512_srai_epi16(_mm512_slli_epi16(_mm512_cvtepu8_epi16(codes), 8), 1), keep);
      acc[0] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), _mm512_loadu_ps(x + i),
                               nan ? _mm512_set1_ps(__builtin_nanf("")) : acc[0]);
      acc[1] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)),
                               _mm512_loadu_ps(x + i + 16), acc[1]);
    }
    total =
        _mm512_fmadd_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_set1_ps(scales[b] * 256.0f), total);
  }
  return _mm512_reduce_add_ps(total);
}
#endif

// Row r of an e4m3 matrix [.., cols] into out [cols].
void e4m3_row(WeightView w, int64_t cols, int64_t r, float* out) {
  const uint8_t* q = w.codes() + r * cols;
  const float* srow = w.scales + (r / kFp8Block) * fp8_num_blocks(cols);
#ifdef MOE_HAVE_X86_FP8_PATH
  if (cpu_has_fp8_path()) {
    for (int64_t c0 = 0; c0 < cols; c0 += kFp8Block) {
      const int64_t n = std::min(kFp8Block, cols - c0);
      const float s = srow[c0 / kFp8Block];
      if (s <= kVectorMaxScale && s >= -kVectorMaxScale) {
        e4m3_block_avx2(q, s, c0, n, out + c0);
      } else {
        e4m3_row_scalar(q, srow, c0, n, out + c0);
      }
    }
    return;
  }
#endif
  e4m3_row_scalar(q, srow, 0, cols, out);
}

}  // namespace

void weight_rows_to_f32(WeightView w, int64_t cols, int64_t r0, int64_t nr, float* dst) {
  if (!w.is_e4m3()) {
    bf16_to_f32(w.bf16_data() + r0 * cols, nr * cols, dst);
    return;
  }
  for (int64_t r = 0; r < nr; ++r) e4m3_row(w, cols, r0 + r, dst + r * cols);
}

bool has_dot_path(DotPath path) {
#ifdef MOE_HAVE_X86_FP8_PATH
  static const bool avx2 = cpu_has_fp8_path() && __builtin_cpu_supports("fma");
  static const bool avx512 =
      avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  if (path == DotPath::kAvx2) return avx2;
  if (path == DotPath::kAvx512) return avx512;
#endif
  return path == DotPath::kScalar || path == DotPath::kBest;
}

float dot_e4m3_row(const float* x, WeightView w, int64_t cols, int64_t r, DotPath path) {
  const uint8_t* q = w.codes() + r * cols;
  const float* srow = w.scales + (r / kFp8Block) * fp8_num_blocks(cols);
  using BlocksDot = float (*)(const float*, const uint8_t*, const float*, int64_t);
  BlocksDot blocks_dot = nullptr;
#ifdef MOE_HAVE_X86_FP8_PATH
  const bool best = path == DotPath::kBest;
  if ((best || path == DotPath::kAvx512) && has_dot_path(DotPath::kAvx512)) {
    blocks_dot = blocks_dot_avx512;
  } else if ((best || path == DotPath::kAvx2) && has_dot_path(DotPath::kAvx2)) {
    blocks_dot = blocks_dot_avx2;
  }
#endif
  // Runs of whole blocks whose scales the vector path takes; the rest block by block, scalar.
  float acc = 0.0f;
  const int64_t whole = cols / kFp8Block;
  int64_t b = 0;
  while (b < fp8_num_blocks(cols)) {
    int64_t e = b;
    while (blocks_dot != nullptr && e < whole && srow[e] <= kVectorMaxScale &&
           srow[e] >= -kVectorMaxScale) {
      ++e;
    }
    if (e > b) {
      acc += blocks_dot(x + b * kFp8Block, q + b * kFp8Block, srow + b, e - b);
      b = e;
      continue;
    }
    for (int64_t c = b * kFp8Block; c < std::min(cols, (b + 1) * kFp8Block); ++c) {
      acc += x[c] * e4m3_dequantise(q[c], srow[b]);
    }
    ++b;
  }
  return acc;
}

void weight_rows_to_bf16(WeightView w, int64_t cols, int64_t r0, int64_t nr, bf16* dst) {
  if (!w.is_e4m3()) {
    std::copy(w.bf16_data() + r0 * cols, w.bf16_data() + (r0 + nr) * cols, dst);
    return;
  }
  thread_local std::vector<float> row;
  if (static_cast<int64_t>(row.size()) < cols) row.resize(static_cast<size_t>(cols));
  for (int64_t r = 0; r < nr; ++r) {
    e4m3_row(w, cols, r0 + r, row.data());
    f32_to_bf16(row.data(), cols, dst + r * cols);
  }
}

}  // namespace moe::kernels::cpu
