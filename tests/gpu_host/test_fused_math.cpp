// CPU emulations of the fused CUDA kernels (kernels/cuda/fused.cu, expert_small.cu), built from
// the same MOE_HD bodies (kernels/cuda/fused_math.h) in the kernels' thread order, against the
// CPU ops they replace:
// - q/k RMSNorm + RoPE and the row RMSNorm (with its residual add) against cpu::rmsnorm,
//   cpu::rope and cpu::add_inplace: the only difference is the order of the fp32 sum of squares
//   (the device: per-thread fma chains and warp butterflies; the CPU: 8 lanes), so they are
//   bit-identical whenever that sum is exact, and within a few fp32 ulps of the output otherwise.
// - the small-batch expert SwiGLU against the CPU's bf16 grouped path (Bf16Ops fallback GEMM):
//   the same rounding points (kGroupedSwiglu), fp32 sums in another order (32-lane butterfly vs
//   8 sequential lanes) and the CPU's approximate exp in silu, so a bf16 rounding may land one
//   step apart; the tolerance below says how far that can move an output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/cpu/bf16_ops.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/fused_math.h"

namespace moe::kernels::cuda {
namespace {

std::vector<float> random_floats(std::mt19937& rng, int64_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<bf16> random_bf16(std::mt19937& rng, int64_t n, float lo, float hi) {
  std::vector<bf16> v(static_cast<size_t>(n));
  for (bf16& b : v) b = float_to_bf16(std::uniform_real_distribution<float>(lo, hi)(rng));
  return v;
}

const uint16_t* bits(const bf16* p) {
  return reinterpret_cast<const uint16_t*>(p);
}

// inv_freq as the backend caches it (and cpu::rope computes it).
std::vector<float> inv_freq_of(double theta, int64_t head_dim) {
  std::vector<float> inv(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    inv[i] = 1.0f / std::pow(static_cast<float>(theta),
                             static_cast<float>(2 * i) / static_cast<float>(head_dim));
  }
  return inv;
}

// qk_norm_rope_kernel on the CPU: one emulated warp per (row, head), lane l holding l + 32 j.
void emulate_qk_norm_rope(float* q, float* k, const bf16* qw, const bf16* kw,
                          const int32_t* positions, const float* inv_freq, int64_t rows,
                          int64_t heads, int64_t kv_heads, int64_t head_dim, float eps) {
  ASSERT_TRUE(qk_fused_head_dim_ok(head_dim));
  const int nj = static_cast<int>(head_dim / kWarpLanes);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t h = 0; h < heads + kv_heads; ++h) {
      const bool is_q = h < heads;
      float* v =
          is_q ? q + (row * heads + h) * head_dim : k + (row * kv_heads + h - heads) * head_dim;
      const bf16* w = is_q ? qw : kw;
      float total = 0.0f;
      for (int j = 0; j < nj; ++j) {
        float lanes[kWarpLanes];
        for (int l = 0; l < kWarpLanes; ++l) {
          const float x = v[l + kWarpLanes * j];
          lanes[l] = mul_rn(x, x);
        }
        total = add_rn(total, warp_sum_emulated(lanes));
      }
      const float inv_rms = rms_inverse(total, head_dim, eps);
      for (int64_t c = 0; c < head_dim; ++c) v[c] = norm_scale(v[c], inv_rms, bf16_to_float(w[c]));
      const float pos = static_cast<float>(positions[row]);
      for (int64_t i = 0; i < head_dim / 2; ++i)
        rope_pair(v[i], v[i + head_dim / 2], pos, inv_freq[i]);
    }
  }
}

// The qk_norm_rope_kernel's geometry and constants.
struct QkCase {
  int64_t rows = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float eps = 1e-6f;
  double theta = 1e6;
};

// q and k through cpu::rmsnorm then cpu::rope (the ops the fused kernel replaces), returned as
// {q_ref, k_ref}; q and k themselves go through the kernel's emulation in place.
std::pair<std::vector<float>, std::vector<float>> qk_norm_rope_both(
    const QkCase& c, std::vector<float>& q, std::vector<float>& k, const std::vector<bf16>& qw,
    const std::vector<bf16>& kw, const std::vector<int32_t>& pos) {
  auto q_ref = q, k_ref = k;
  cpu::rmsnorm(q_ref.data(), qw.data(), c.rows * c.heads, c.head_dim, c.eps, q_ref.data());
  cpu::rmsnorm(k_ref.data(), kw.data(), c.rows * c.kv_heads, c.head_dim, c.eps, k_ref.data());
  cpu::rope(q_ref.data(), pos.data(), c.rows, c.heads, c.head_dim, c.theta);
  cpu::rope(k_ref.data(), pos.data(), c.rows, c.kv_heads, c.head_dim, c.theta);
  const auto inv = inv_freq_of(c.theta, c.head_dim);
  emulate_qk_norm_rope(q.data(), k.data(), qw.data(), kw.data(), pos.data(), inv.data(), c.rows,
                       c.heads, c.kv_heads, c.head_dim, c.eps);
  return {q_ref, k_ref};
}

// norm_rows_kernel on the CPU: one emulated block of norm_row_threads(dim) threads per row.
void emulate_norm_rows(float* x, const float* delta, const bf16* w, int64_t rows, int64_t dim,
                       float eps, float* y, bf16* y_bf16) {
  const int threads = norm_row_threads(dim);
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * dim;
    if (delta != nullptr) {
      for (int64_t c = 0; c < dim; ++c) xr[c] = add_rn(xr[c], delta[r * dim + c]);
    }
    float total = 0.0f;
    for (int wi = 0; wi < threads / kWarpLanes; ++wi) {
      float lanes[kWarpLanes];
      for (int l = 0; l < kWarpLanes; ++l) {
        lanes[l] = sumsq_partial(xr, dim, wi * kWarpLanes + l, threads);
      }
      total = add_rn(total, warp_sum_emulated(lanes));
    }
    const float inv_rms = rms_inverse(total, dim, eps);
    for (int64_t c = 0; c < dim; ++c) {
      const float v = norm_scale(xr[c], inv_rms, bf16_to_float(w[c]));
      y[r * dim + c] = v;
      if (y_bf16 != nullptr) y_bf16[r * dim + c] = float_to_bf16(v);
    }
  }
}

// max |got - want| / scale over all elements.
double max_scaled_diff(const std::vector<float>& got, const std::vector<float>& want,
                       double scale) {
  double m = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(got[i]) - want[i]) / scale);
  }
  return m;
}

double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

TEST(FusedMath, WarpSumEmulationIsTheButterfly) {
  float v[kWarpLanes];
  for (int l = 0; l < kWarpLanes; ++l) v[l] = static_cast<float>(l + 1);
  EXPECT_EQ(warp_sum_emulated(v), 528.0f);  // exact: small integers
  // Not left-to-right: 1 and 31 values of 2^-24 (half an ulp of 1). In sequence every 2^-24
  // rounds away; the butterfly adds them pairwise first and keeps 15 ulps (the lane-16 term
  // still rounds away in the first step).
  v[0] = 1.0f;
  for (int l = 1; l < kWarpLanes; ++l) v[l] = std::ldexp(1.0f, -24);
  float seq = 0.0f;
  for (int l = 0; l < kWarpLanes; ++l) seq += v[l];
  EXPECT_EQ(seq, 1.0f);
  EXPECT_EQ(warp_sum_emulated(v), 1.0f + std::ldexp(15.0f, -23));
}

// With FMA in the host target (-march=native builds) the host compiler may contract the CPU ops'
// a * c - b * s; the bit-for-bit comparisons hold for the default (portable) build.
#if defined(__FMA__)
constexpr bool kHostMayContract = true;
#else
constexpr bool kHostMayContract = false;
#endif

TEST(FusedMath, QkNormRopeBitIdenticalToCpuWhenSumOfSquaresIsExact) {
  if (kHostMayContract) GTEST_SKIP() << "host FMA contraction (native build)";
  // Inputs k / 8 with |k| <= 24: squares and their sums are exact in fp32 in any order, so the
  // emulation and cpu::rmsnorm + cpu::rope run identical arithmetic otherwise: same bits.
  std::mt19937 rng(11);
  const QkCase c{5, 4, 2, 128};
  auto grid = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = static_cast<float>(std::uniform_int_distribution<int>(-24, 24)(rng)) / 8;
    return v;
  };
  auto q = grid(c.rows * c.heads * c.head_dim), k = grid(c.rows * c.kv_heads * c.head_dim);
  const auto qw = random_bf16(rng, c.head_dim, 0.5f, 1.5f),
             kw = random_bf16(rng, c.head_dim, 0.5f, 1.5f);
  const std::vector<int32_t> pos = {0, 7, 4095, 32768, 131071};
  const auto [q_ref, k_ref] = qk_norm_rope_both(c, q, k, qw, kw, pos);
  EXPECT_EQ(q, q_ref);
  EXPECT_EQ(k, k_ref);
}

TEST(FusedMath, QkNormRopeWithinSumOrderOfCpu) {
  // Random fp32 inputs: the sum of squares rounds differently (order), which moves inv_rms by
  // about one ulp and every output by the same factor, then rope mixes two such values: the
  // measured worst is 4 ulps (2^-22) of the largest output; the bound is 2^-21.
  std::mt19937 rng(12);
  for (int64_t head_dim : {64, 128, 256}) {
    const QkCase c{7, 32, 4, head_dim};
    auto q = random_floats(rng, c.rows * c.heads * head_dim, -4.0f, 4.0f);
    auto k = random_floats(rng, c.rows * c.kv_heads * head_dim, -4.0f, 4.0f);
    const auto qw = random_bf16(rng, head_dim, 0.2f, 2.0f);
    const auto kw = random_bf16(rng, head_dim, 0.2f, 2.0f);
    const std::vector<int32_t> pos = {0, 1, 2, 100, 4096, 40959, 262143};
    const auto [q_ref, k_ref] = qk_norm_rope_both(c, q, k, qw, kw, pos);
    EXPECT_LE(max_scaled_diff(q, q_ref, max_abs(q_ref)), std::ldexp(1.0, -21)) << head_dim;
    EXPECT_LE(max_scaled_diff(k, k_ref, max_abs(k_ref)), std::ldexp(1.0, -21)) << head_dim;
  }
}

TEST(FusedMath, QkFusedHeadDims) {
  EXPECT_TRUE(qk_fused_head_dim_ok(64));
  EXPECT_TRUE(qk_fused_head_dim_ok(128));
  EXPECT_TRUE(qk_fused_head_dim_ok(256));
  EXPECT_FALSE(qk_fused_head_dim_ok(96));  // pairs would straddle lanes
  EXPECT_FALSE(qk_fused_head_dim_ok(512));
  EXPECT_FALSE(qk_fused_head_dim_ok(10));
}

TEST(FusedMath, AddRmsNormMatchesAddInplaceThenRmsNorm) {
  std::mt19937 rng(13);
  const float eps = 1e-6f;
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{3, 2048}, {4, 128}, {2, 37}, {1, 3000}}) {
    auto x = random_floats(rng, rows * dim, -3.0f, 3.0f);
    const auto delta = random_floats(rng, rows * dim, -1.0f, 1.0f);
    const auto w = random_bf16(rng, dim, 0.5f, 2.0f);
    auto x_ref = x;
    std::vector<float> y_ref(x.size()), y(x.size());
    std::vector<bf16> y_bf16(x.size());
    cpu::add_inplace(x_ref.data(), delta.data(), rows * dim);
    cpu::rmsnorm(x_ref.data(), w.data(), rows, dim, eps, y_ref.data());
    emulate_norm_rows(x.data(), delta.data(), w.data(), rows, dim, eps, y.data(), y_bf16.data());
    EXPECT_EQ(x, x_ref) << "the residual add is the same single fp32 add";
    // Sum-of-squares order only (see QkNormRopeWithinSumOrderOfCpu).
    EXPECT_LE(max_scaled_diff(y, y_ref, max_abs(y_ref)), std::ldexp(1.0, -21)) << dim;
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y_bf16[i].bits, float_to_bf16(y[i]).bits) << i;
  }
}

TEST(FusedMath, RmsNormBitIdenticalToCpuWhenSumOfSquaresIsExact) {
  if (kHostMayContract) GTEST_SKIP() << "host FMA contraction (native build)";
  std::mt19937 rng(14);
  const int64_t rows = 3, dim = 2048;
  std::vector<float> x(static_cast<size_t>(rows * dim));
  for (float& v : x) v = static_cast<float>(std::uniform_int_distribution<int>(-40, 40)(rng)) / 16;
  const auto w = random_bf16(rng, dim, 0.5f, 2.0f);
  std::vector<float> y(x.size()), y_ref(x.size());
  cpu::rmsnorm(x.data(), w.data(), rows, dim, 1e-6f, y_ref.data());
  emulate_norm_rows(x.data(), nullptr, w.data(), rows, dim, 1e-6f, y.data(), nullptr);
  EXPECT_EQ(y, y_ref);
}

// ---- small-batch expert SwiGLU ----

struct ExpertSet {
  std::vector<std::vector<bf16>> gate, up, down;
  std::vector<ExpertWeights> weights;
};

ExpertSet make_experts(std::mt19937& rng, int64_t n, int64_t hidden, int64_t inter) {
  ExpertSet e;
  const float a = 1.0f / std::sqrt(static_cast<float>(hidden));
  const float b = 1.0f / std::sqrt(static_cast<float>(inter));
  for (int64_t i = 0; i < n; ++i) {
    e.gate.push_back(random_bf16(rng, inter * hidden, -2 * a, 2 * a));
    e.up.push_back(random_bf16(rng, inter * hidden, -2 * a, 2 * a));
    e.down.push_back(random_bf16(rng, hidden * inter, -2 * b, 2 * b));
  }
  for (int64_t i = 0; i < n; ++i)
    e.weights.push_back({e.gate[i].data(), e.up[i].data(), e.down[i].data()});
  return e;
}

// launch_expert_swiglu_small on the CPU: CTA rows = active-slot ordinals < grid_slots, passes of
// rows_per_pass rows staged as bf16, one emulated warp per output feature.
void emulate_expert_small(const float* x, int64_t hidden, int64_t inter, const int32_t* row_index,
                          const int32_t* slot_begin, const ExpertWeights* slot_weights,
                          int64_t num_slots, int64_t grid_slots, int rows_per_pass, float* out) {
  const int64_t pairs = slot_begin[num_slots];
  std::vector<uint16_t> act(static_cast<size_t>(pairs * inter));
  std::vector<uint16_t> xs(static_cast<size_t>(rows_per_pass * hidden));
  float lg[kWarpLanes], lu[kWarpLanes];
  for (int64_t a = 0; a < grid_slots; ++a) {  // gate/up kernel
    const int s = active_slot(slot_begin, num_slots, a);
    if (s < 0) continue;
    const ExpertWeights w = slot_weights[s];
    for (int64_t r0 = slot_begin[s]; r0 < slot_begin[s + 1]; r0 += rows_per_pass) {
      const int64_t nr = std::min<int64_t>(rows_per_pass, slot_begin[s + 1] - r0);
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t c = 0; c < hidden; ++c) {
          xs[r * hidden + c] = f32_to_bf16_bits(x[row_index[r0 + r] * hidden + c]);
        }
      }
      for (int64_t o = 0; o < inter; ++o) {
        for (int64_t r = 0; r < nr; ++r) {
          for (int l = 0; l < kWarpLanes; ++l) {
            lg[l] =
                expert_dot_lane(bits(w.gate.bf16_data() + o * hidden), &xs[r * hidden], hidden, l);
            lu[l] =
                expert_dot_lane(bits(w.up.bf16_data() + o * hidden), &xs[r * hidden], hidden, l);
          }
          act[(r0 + r) * inter + o] = swiglu_act_bits(warp_sum_emulated(lg), warp_sum_emulated(lu));
        }
      }
    }
  }
  for (int64_t a = 0; a < grid_slots; ++a) {  // down kernel
    const int s = active_slot(slot_begin, num_slots, a);
    if (s < 0) continue;
    const ExpertWeights w = slot_weights[s];
    for (int64_t p = slot_begin[s]; p < slot_begin[s + 1]; ++p) {
      for (int64_t h = 0; h < hidden; ++h) {
        for (int l = 0; l < kWarpLanes; ++l) {
          lg[l] = expert_dot_lane(bits(w.down.bf16_data() + h * inter), &act[p * inter], inter, l);
        }
        out[p * hidden + h] = expert_out_value(warp_sum_emulated(lg));
      }
    }
  }
}

// Runs the emulation and the CPU bf16 grouped path on `counts` rows per slot; returns the largest
// |difference| in units of the output rms.
double expert_case(int64_t hidden, int64_t inter, const std::vector<int64_t>& counts,
                   int rows_per_pass, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t S = static_cast<int64_t>(counts.size());
  const ExpertSet ex = make_experts(rng, S, hidden, inter);
  std::vector<int32_t> slot_begin(static_cast<size_t>(S + 1), 0);
  for (int64_t s = 0; s < S; ++s)
    slot_begin[s + 1] = slot_begin[s] + static_cast<int32_t>(counts[s]);
  const int64_t P = slot_begin[S];
  const int64_t R = std::max<int64_t>(P, 1) + 2;
  const auto x = random_floats(rng, R * hidden, -2.0f, 2.0f);
  std::vector<int32_t> row_index(static_cast<size_t>(P));
  for (auto& r : row_index) r = std::uniform_int_distribution<int32_t>(0, R - 1)(rng);

  std::vector<float> got(static_cast<size_t>(P * hidden), -7.0f), want(got);
  emulate_expert_small(x.data(), hidden, inter, row_index.data(), slot_begin.data(),
                       ex.weights.data(), S, S, rows_per_pass, got.data());
  std::vector<ExpertGroup> groups;
  for (int64_t s = 0; s < S; ++s) groups.push_back({ex.weights[s], slot_begin[s], counts[s]});
  cpu::Bf16Ops ops(/*force_fallback=*/true);
  ops.grouped_expert_swiglu(x.data(), hidden, inter, groups.data(), S, row_index.data(),
                            want.data());
  double sq = 0.0;
  for (float v : want) sq += static_cast<double>(v) * v;
  const double rms = std::sqrt(sq / std::max<size_t>(want.size(), 1));
  int64_t same = 0;
  for (size_t i = 0; i < got.size(); ++i) same += got[i] == want[i] ? 1 : 0;
  // Nearly all outputs agree bit for bit (measured: all at the small shapes, 99.99% at Qwen's);
  // the rest by about one bf16 step (see kExpertTol).
  EXPECT_GE(static_cast<double>(same), 0.99 * static_cast<double>(got.size()));
  return got.empty() ? 0.0 : max_scaled_diff(got, want, rms);
}

// Outputs are bf16 (relative step 2^-8 = 0.4%). A gate/up/act element rounded one bf16 step
// apart moves an output by about w * 2^-8 |act|, far below its rms; the output's own rounding
// may then land one step apart: |d| <= 2^-8 |out|, about 1% of the rms for the largest outputs
// (measured worst: 0.3% of the rms). 2^-5 rms bounds that with room, while a wrong row, slot or
// rounding point is off by about the rms itself.
constexpr double kExpertTol = 1.0 / 32;

TEST(FusedMath, ExpertSmallMatchesCpuBf16GroupedPath) {
  EXPECT_LE(expert_case(256, 96, {0, 1, 3, 0, 2}, kExpertRowsPerPass, 31), kExpertTol);
}

TEST(FusedMath, ExpertSmallSeveralPassesPerSlot) {
  // 19 rows in one slot with 8 rows per pass: three passes; and one-row passes.
  EXPECT_LE(expert_case(128, 64, {19, 0, 5}, kExpertRowsPerPass, 32), kExpertTol);
  EXPECT_LE(expert_case(128, 64, {3, 2}, 1, 33), kExpertTol);
}

TEST(FusedMath, ExpertSmallQwenShapesBatchOne) {
  // Qwen3-30B-A3B: hidden 2048, expert inter 768; a decode token on 8 of 16 local slots.
  EXPECT_LE(expert_case(2048, 768, {1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 0}, 8, 34),
            kExpertTol);
}

TEST(FusedMath, ActiveSlotSkipsEmptySlots) {
  const std::vector<int32_t> begin = {0, 0, 2, 2, 3, 3, 3, 7};
  EXPECT_EQ(active_slot(begin.data(), 7, 0), 1);
  EXPECT_EQ(active_slot(begin.data(), 7, 1), 3);
  EXPECT_EQ(active_slot(begin.data(), 7, 2), 6);
  EXPECT_EQ(active_slot(begin.data(), 7, 3), -1);
  const std::vector<int32_t> none = {4, 4, 4};
  EXPECT_EQ(active_slot(none.data(), 2, 0), -1);
}

TEST(FusedMath, ExpertSmallShapesAndPasses) {
  EXPECT_TRUE(expert_small_shape_ok(2048, 768));
  EXPECT_FALSE(expert_small_shape_ok(100, 36));      // rows not 16-byte chunks
  EXPECT_FALSE(expert_small_shape_ok(32768, 768));   // one row over the shared memory
  EXPECT_EQ(expert_rows_per_pass(2048, 768, 1), 1);  // batch 1: one row staged
  EXPECT_EQ(expert_rows_per_pass(2048, 768, 100), kExpertRowsPerPass);
  EXPECT_EQ(expert_rows_per_pass(8192, 768, 100), 3);  // 48 KiB / 16 KiB rows
  EXPECT_GE(kExpertSmallMaxRows, kExpertRowsPerPass);
}

TEST(FusedMath, SwigluActRoundsGateUpAndActivation) {
  // gate and up are rounded before silu: a gate sum just off a bf16 value acts as that value.
  const float g = 1.0f + std::ldexp(1.0f, -12), u = 3.0f;
  const float want = round_to_bf16(silu(1.0f) * 3.0f);
  EXPECT_EQ(bf16_bits_to_f32(swiglu_act_bits(g, u)), want);
  EXPECT_EQ(expert_out_value(1.0f + std::ldexp(1.0f, -10)), 1.0f);
}

}  // namespace
}  // namespace moe::kernels::cuda
