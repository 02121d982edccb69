// CPU emulation of kernels/cuda/attention_tc.cu with the same __host__ __device__ bodies
// (attention_tc_math.h):
// - the mma.sync m16n8k16 fragment maps cover each matrix element exactly once;
// - the tensor-core tile schedule (attention_tc_plan.h): every (sequence, token, head) row is
//   computed by exactly one CTA, which reads keys up to its last token's position;
// - the tensor-core prefill kernel lane by lane (4 warps x 32 lanes per CTA, fragments, quad
//   reductions, bf16 q and P, fp32 online softmax) against a double-precision reference with the
//   same roundings (tight) and against the fp32 reference attention (bound from the roundings);
// - the fixed-grid decode: row -> sequence lookup, fixed key splits, early exit of dead splits,
//   combine of the live ones, against the reference attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/common/check.h"
#include "kernels/cuda/attention_math.h"
#include "kernels/cuda/attention_tc_math.h"
#include "kernels/cuda/attention_tc_plan.h"
#include "kernels/cuda/device_math.h"
#include "tests/common/test_data.h"
#include "tests/gpu_host/attention_case.h"

namespace moe::kernels::cuda {
namespace {

// ---------------------------------------------------------------- fragment maps

TEST(AttentionTcFragments, EveryElementHasExactlyOneLaneAndRegister) {
  std::set<std::pair<int, int>> a, b, c;
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      for (int half = 0; half < 2; ++half) {
        EXPECT_TRUE(a.insert({mma_a_row(lane, reg), mma_a_col(lane, reg, half)}).second);
      }
      EXPECT_TRUE(c.insert({mma_c_row(lane, reg), mma_c_col(lane, reg)}).second);
    }
    for (int reg = 0; reg < 2; ++reg) {
      for (int half = 0; half < 2; ++half) {
        EXPECT_TRUE(b.insert({mma_b_k(lane, reg, half), mma_b_n(lane)}).second);
      }
    }
  }
  EXPECT_EQ(a.size(), 16u * 16u);
  EXPECT_EQ(b.size(), 16u * 8u);
  EXPECT_EQ(c.size(), 16u * 8u);
  for (const auto& [r, col] : a) EXPECT_TRUE(r >= 0 && r < 16 && col >= 0 && col < 16);
  for (const auto& [k, n] : b) EXPECT_TRUE(k >= 0 && k < 16 && n >= 0 && n < 8);
  for (const auto& [r, n] : c) EXPECT_TRUE(r >= 0 && r < 16 && n >= 0 && n < 8);
  // The PV trick: the C fragments of S n-tiles 2kk and 2kk+1 are the A fragment of k step kk.
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      const int tile = reg >> 1, idx = 2 * (reg & 1);  // a[reg] = pack(s[2kk + tile][idx, idx+1])
      for (int half = 0; half < 2; ++half) {
        EXPECT_EQ(mma_a_row(lane, reg), mma_c_row(lane, idx + half));
        EXPECT_EQ(mma_a_col(lane, reg, half), 8 * tile + mma_c_col(lane, idx + half));
      }
    }
  }
  EXPECT_EQ(pack_bf16x2(1.0f, -2.0f), 0xc0003f80u);
}

// One warp-wide mma.sync.m16n8k16 (row.col, bf16 in, fp32 accumulate), from the per-lane
// registers through the fragment maps; products exact, sums in fp32 in k order.
using LaneA = std::array<std::array<uint32_t, 4>, 32>;
using LaneB = std::array<std::array<uint32_t, 2>, 32>;
using LaneC = std::array<std::array<float, 4>, 32>;

float bf16_half(uint32_t reg, int half) {
  return bf16_bits_to_f32(static_cast<uint16_t>(half == 0 ? reg & 0xffffu : reg >> 16));
}

void mma_emulate(LaneC& c, const LaneA& a, const LaneB& b) {
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < 4; ++reg) {
      for (int half = 0; half < 2; ++half) {
        A[mma_a_row(lane, reg)][mma_a_col(lane, reg, half)] = bf16_half(a[lane][reg], half);
      }
    }
    for (int reg = 0; reg < 2; ++reg) {
      for (int half = 0; half < 2; ++half) {
        B[mma_b_k(lane, reg, half)][mma_b_n(lane)] = bf16_half(b[lane][reg], half);
      }
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const int r = mma_c_row(lane, i), n = mma_c_col(lane, i);
      float acc = c[lane][i];
      for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][n];
      c[lane][i] = acc;
    }
  }
}

// ---------------------------------------------------------------- test data

using Case = moe::test::AttentionCase;
using Data = moe::test::AttentionInputs;  // the cache as fp32 holding bf16 values

void append_rows(const std::vector<KvAppendRow>& rows, int64_t W, const Data& d,
                 std::vector<bf16>& ck, std::vector<bf16>& cv) {
  for (const KvAppendRow& a : rows) {
    for (int64_t j = 0; j < W; ++j) {
      ck[int64_t{a.dst_row} * W + j] = float_to_bf16(d.k[int64_t{a.src_row} * W + j]);
      cv[int64_t{a.dst_row} * W + j] = float_to_bf16(d.v[int64_t{a.src_row} * W + j]);
    }
  }
}

// ---------------------------------------------------------------- tile schedule

void check_schedule(const Case& c, const AttentionTcPlan& plan) {
  const int64_t H = c.shape.num_heads, KV = c.shape.num_kv_heads, G = H / KV;
  std::set<std::tuple<int64_t, int64_t>> seen;  // (q row, head)
  for (size_t n = 0; n < plan.items.size(); ++n) {
    const AttentionTcItem& it = plan.items[n];
    if (n > 0) {
      EXPECT_GE(plan.items[n - 1].key_end, it.key_end) << "longest first";
    }
    EXPECT_EQ(it.tile_row0 % kTcBlockRows, 0);
    int32_t max_pos = -1;
    for (int r = 0; r < kTcBlockRows; ++r) {
      const TcRow row = tc_row(it, r, static_cast<int>(G));
      if (!row.valid) {
        EXPECT_GE(it.tile_row0 + r, it.num_new * G);
        continue;
      }
      EXPECT_EQ(row.head / G, it.kv_head) << "a tile mixes kv heads";
      EXPECT_TRUE(seen.insert({it.row_begin + row.token, row.head}).second) << "row twice";
      max_pos = std::max(max_pos, row.pos);
    }
    EXPECT_EQ(it.key_end, max_pos + 1);
  }
  size_t want_rows = 0;
  std::vector<KvAppendRow> want_append;
  for (const AttentionSeq& s : c.seqs) {
    want_rows += static_cast<size_t>(s.num_new * H);
    for (int64_t i = 0; i < s.num_new; ++i) {
      for (int64_t h = 0; h < H; ++h) EXPECT_EQ(seen.count({s.row_begin + i, h}), 1u);
      want_append.push_back({static_cast<int32_t>(s.row_begin + i),
                             static_cast<int32_t>(s.cache_slot * c.max_len + s.past_len + i)});
    }
  }
  EXPECT_EQ(seen.size(), want_rows);
  ASSERT_EQ(plan.append.size(), want_append.size());
  for (size_t i = 0; i < want_append.size(); ++i) {
    EXPECT_EQ(plan.append[i].src_row, want_append[i].src_row);
    EXPECT_EQ(plan.append[i].dst_row, want_append[i].dst_row);
  }
}

Case prefill_case() {
  // Qwen3-30B-A3B geometry (G = 8): a 200-token prompt over a 37-token prefix, a fresh
  // 70-token prompt and a 64-token one, rows out of sequence order.
  return {{{70, 200, 37, 1}, {0, 70, 0, 0}, {270, 64, 5, 2}}, {32, 4, 128}, 3, 256};
}

TEST(AttentionTcSchedule, EveryRowOnceAndKeysUpToTheTilesLastPosition) {
  for (const Case& c : {prefill_case(), Case{{{0, 1, 0, 0}}, {32, 4, 128}, 1, 8},
                        Case{{{3, 63, 100, 0}, {0, 3, 0, 1}}, {12, 4, 128}, 2, 200},
                        Case{{{0, 9, 0, 0}}, {6, 6, 128}, 1, 9}}) {
    const AttentionTcPlan plan = plan_attention_tc(
        c.seqs.data(), static_cast<int64_t>(c.seqs.size()), c.shape, c.num_slots, c.max_len);
    check_schedule(c, plan);
  }
  // 200 tokens x 8 heads = 1600 rows = 25 tiles per kv head.
  const Case c = prefill_case();
  const AttentionTcPlan plan = plan_attention_tc(c.seqs.data(), 1, c.shape, 3, 256);
  EXPECT_EQ(plan.items.size(), 25u * 4u);
}

TEST(AttentionTcSchedule, BadInputsThrow) {
  const AttentionSeq ok{0, 64, 0, 0};
  EXPECT_THROW(plan_attention_tc(&ok, 1, {32, 4, 64}, 1, 64), moe::Error);   // head_dim
  EXPECT_THROW(plan_attention_tc(&ok, 1, {30, 4, 128}, 1, 64), moe::Error);  // H % KV
  EXPECT_THROW(plan_attention_tc(&ok, 1, {32, 4, 128}, 1, 63), moe::Error);  // too long
  const AttentionSeq bad_slot{0, 64, 0, 1};
  EXPECT_THROW(plan_attention_tc(&bad_slot, 1, {32, 4, 128}, 1, 64), moe::Error);
}

TEST(AttentionTcSchedule, SelectionRule) {
  const AttentionShape qwen{32, 4, 128};
  EXPECT_TRUE(use_attention_tc({0, kAttnTcMinNewTokens, 0, 0}, qwen));
  EXPECT_FALSE(use_attention_tc({0, kAttnTcMinNewTokens - 1, 4000, 0}, qwen));
  EXPECT_FALSE(use_attention_tc({0, 1000, 0, 0}, {32, 4, 64}));  // head_dim: CUDA-core kernel
}

TEST(AttentionTcMask, CausalByAbsolutePosition) {
  // A query at position past_len + i sees cache positions <= past_len + i.
  const AttentionTcItem it{0, 10, 20, 0, 1, 64, 0, 0};  // G = 8: rows 64.. are tokens 8..
  const TcRow r = tc_row(it, 3, 8);
  EXPECT_TRUE(r.valid);
  EXPECT_EQ(r.token, 8);
  EXPECT_EQ(r.head, 8 + 3);
  EXPECT_EQ(r.pos, 18);
  EXPECT_TRUE(attn_key_visible(18, r.pos));
  EXPECT_FALSE(attn_key_visible(19, r.pos));
  EXPECT_EQ(tc_key_end(10, 20, 64, 8), 10 + 15 + 1);   // rows 64..127: tokens 8..15
  EXPECT_EQ(tc_key_end(10, 20, 128, 8), 10 + 19 + 1);  // rows 128..159 only: tokens 16..19
  EXPECT_FALSE(tc_row(it, 96, 8).valid);
}

// ---------------------------------------------------------------- the tensor-core kernel

constexpr int kD = kTcHeadDim;

// attention_tc_kernel for one CTA, lane by lane, on the bf16 cache (k/v already appended).
void emulate_tc_item(const AttentionTcItem& it, const Case& c, const std::vector<float>& q,
                     const std::vector<bf16>& ck, const std::vector<bf16>& cv,
                     std::vector<float>& out) {
  const int H = static_cast<int>(c.shape.num_heads), KV = static_cast<int>(c.shape.num_kv_heads);
  const int G = H / KV;
  const int64_t W = int64_t{KV} * kD;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(kD)));
  std::vector<uint16_t> q_s(kTcBlockRows * kD), k_s(kTcKeyTile * kD), v_s(kTcKeyTile * kD);
  for (int r = 0; r < kTcBlockRows; ++r) {
    const TcRow row = tc_row(it, r, G);
    for (int d = 0; d < kD; ++d) {
      const float x =
          row.valid ? q[((it.row_begin + row.token) * int64_t{H} + row.head) * kD + d] : 0.0f;
      q_s[r * kD + d] = f32_to_bf16_bits(x);
    }
  }
  auto lds32 = [](const std::vector<uint16_t>& s, int at) {
    return static_cast<uint32_t>(s[at]) | (static_cast<uint32_t>(s[at + 1]) << 16);
  };
  for (int warp = 0; warp < kTcWarps; ++warp) {
    // Per-lane state, as the kernel's registers.
    std::array<std::array<TcRow, 2>, 32> rows;
    int warp_last_pos = -1;
    for (int lane = 0; lane < 32; ++lane) {
      for (int half = 0; half < 2; ++half) {
        rows[lane][half] = tc_row(it, warp * kTcWarpRows + mma_c_row(lane, 2 * half), G);
        if (rows[lane][half].valid) warp_last_pos = std::max(warp_last_pos, rows[lane][half].pos);
      }
    }
    std::array<std::array<float, 2>, 32> m, l;
    for (auto& x : m) x = {-INFINITY, -INFINITY};
    for (auto& x : l) x = {0.0f, 0.0f};
    std::vector<LaneC> acc(kD / 8);
    for (auto& t : acc) {
      for (auto& x : t) x = {0, 0, 0, 0};
    }
    std::vector<LaneA> qa(kD / 16);
    for (int kk = 0; kk < kD / 16; ++kk) {
      for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
          const int r = warp * kTcWarpRows + mma_a_row(lane, reg);
          qa[kk][lane][reg] = lds32(q_s, r * kD + 16 * kk + mma_a_col(lane, reg, 0));
        }
      }
    }
    for (int kb = 0; kb < it.key_end; kb += kTcKeyTile) {
      for (int j = 0; j < kTcKeyTile; ++j) {
        for (int d = 0; d < kD; ++d) {
          uint16_t kx = 0, vx = 0;
          if (kb + j < it.key_end) {
            const int64_t at = (int64_t{it.cache_row0} + kb + j) * W + int64_t{it.kv_head} * kD + d;
            kx = ck[at].bits;
            vx = cv[at].bits;
          }
          k_s[j * kD + d] = kx;
          v_s[j * kD + d] = vx;
        }
      }
      if (kb > warp_last_pos) continue;
      std::vector<LaneC> s(kTcKeyTile / 8);
      for (int n = 0; n < kTcKeyTile / 8; ++n) {
        for (auto& x : s[n]) x = {0, 0, 0, 0};
        for (int kk = 0; kk < kD / 16; ++kk) {
          LaneB b;
          for (int lane = 0; lane < 32; ++lane) {
            for (int reg = 0; reg < 2; ++reg) {
              b[lane][reg] =
                  lds32(k_s, (8 * n + mma_b_n(lane)) * kD + 16 * kk + mma_b_k(lane, reg, 0));
            }
          }
          mma_emulate(s[n], qa[kk], b);
        }
      }
      std::array<std::array<float, 2>, 32> tmax, corr, psum;
      for (int lane = 0; lane < 32; ++lane) {
        tmax[lane] = {-INFINITY, -INFINITY};
        psum[lane] = {0.0f, 0.0f};
        for (int n = 0; n < kTcKeyTile / 8; ++n) {
          for (int i = 0; i < 4; ++i) {
            const int half = i >> 1;
            const int key = kb + 8 * n + mma_c_col(lane, i);
            const TcRow& row = rows[lane][half];
            const bool keep = row.valid && key < it.key_end && attn_key_visible(key, row.pos);
            float& x = s[n][lane][i];
            x = keep ? x * scale : -INFINITY;
            tmax[lane][half] = std::max(tmax[lane][half], x);
          }
        }
      }
      // quad reductions: lanes 4g .. 4g+3 hold one row (xor 1, then xor 2)
      auto quad = [](std::array<std::array<float, 2>, 32>& v, int half, bool is_max) {
        for (int o : {1, 2}) {
          std::array<float, 32> nv;
          for (int lane = 0; lane < 32; ++lane) {
            const float a = v[lane][half], b = v[lane ^ o][half];
            nv[lane] = is_max ? std::max(a, b) : a + b;
          }
          for (int lane = 0; lane < 32; ++lane) v[lane][half] = nv[lane];
        }
      };
      for (int half = 0; half < 2; ++half) quad(tmax, half, true);
      for (int lane = 0; lane < 32; ++lane) {
        for (int half = 0; half < 2; ++half) {
          const SoftmaxTileStep st = softmax_tile_step(m[lane][half], tmax[lane][half]);
          m[lane][half] = st.m_new;
          corr[lane][half] = st.corr;
        }
        for (int n = 0; n < kTcKeyTile / 8; ++n) {
          for (int i = 0; i < 4; ++i) {
            s[n][lane][i] = tc_prob(s[n][lane][i], m[lane][i >> 1]);
            psum[lane][i >> 1] += s[n][lane][i];
          }
        }
      }
      for (int half = 0; half < 2; ++half) quad(psum, half, false);
      for (int lane = 0; lane < 32; ++lane) {
        for (int half = 0; half < 2; ++half) {
          l[lane][half] = l[lane][half] * corr[lane][half] + psum[lane][half];
        }
        for (auto& t : acc) {
          for (int i = 0; i < 4; ++i) t[lane][i] *= corr[lane][i >> 1];
        }
      }
      for (int kk = 0; kk < kTcKeyTile / 16; ++kk) {
        LaneA a;
        for (int lane = 0; lane < 32; ++lane) {
          a[lane][0] = pack_bf16x2(s[2 * kk][lane][0], s[2 * kk][lane][1]);
          a[lane][1] = pack_bf16x2(s[2 * kk][lane][2], s[2 * kk][lane][3]);
          a[lane][2] = pack_bf16x2(s[2 * kk + 1][lane][0], s[2 * kk + 1][lane][1]);
          a[lane][3] = pack_bf16x2(s[2 * kk + 1][lane][2], s[2 * kk + 1][lane][3]);
        }
        for (int n = 0; n < kD / 8; ++n) {
          LaneB b;
          for (int lane = 0; lane < 32; ++lane) {
            const int dim = 8 * n + mma_b_n(lane);
            for (int reg = 0; reg < 2; ++reg) {
              const uint32_t lo = v_s[(16 * kk + mma_b_k(lane, reg, 0)) * kD + dim];
              const uint32_t hi = v_s[(16 * kk + mma_b_k(lane, reg, 1)) * kD + dim];
              b[lane][reg] = lo | (hi << 16);
            }
          }
          mma_emulate(acc[n], a, b);
        }
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int half = 0; half < 2; ++half) {
        const TcRow& row = rows[lane][half];
        if (!row.valid) continue;
        const float inv_l = attn_inv_l(l[lane][half]);
        float* dst = out.data() + ((it.row_begin + row.token) * int64_t{H} + row.head) * kD;
        for (int n = 0; n < kD / 8; ++n) {
          const int d = 8 * n + mma_c_col(lane, 2 * half);
          dst[d] = acc[n][lane][2 * half] * inv_l;
          dst[d + 1] = acc[n][lane][2 * half + 1] * inv_l;
        }
      }
    }
  }
}

// Double-precision attention with the kernel's roundings: bf16(q) . k, p = bf16(exp(s - max))
// (from the exact row max; the kernel's running max differs, but bf16(x) * c == bf16(x * c) only
// up to one rounding, so this bounds rather than reproduces), out = sum p v / sum p.
std::vector<double> rounded_reference(const Case& c, const std::vector<float>& q,
                                      const std::vector<bf16>& ck, const std::vector<bf16>& cv) {
  const int64_t H = c.shape.num_heads, KV = c.shape.num_kv_heads, D = c.shape.head_dim;
  const int64_t G = H / KV, W = KV * D;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> out(c.num_rows() * H * D, 0.0);
  for (const AttentionSeq& s : c.seqs) {
    for (int64_t i = 0; i < s.num_new; ++i) {
      const int64_t pos = s.past_len + i;
      for (int64_t h = 0; h < H; ++h) {
        const float* qr = q.data() + ((s.row_begin + i) * H + h) * D;
        std::vector<double> sc(pos + 1);
        double mx = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          const int64_t at = (s.cache_slot * c.max_len + j) * W + (h / G) * D;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d)
            dot += double{round_to_bf16(qr[d])} * bf16_to_float(ck[at + d]);
          sc[j] = dot * scale;
          mx = std::max(mx, sc[j]);
        }
        double l = 0.0;
        std::vector<double> o(D, 0.0);
        for (int64_t j = 0; j <= pos; ++j) {
          const double p = round_to_bf16(static_cast<float>(std::exp(sc[j] - mx)));
          l += p;
          const int64_t at = (s.cache_slot * c.max_len + j) * W + (h / G) * D;
          for (int64_t d = 0; d < D; ++d) o[d] += p * bf16_to_float(cv[at + d]);
        }
        for (int64_t d = 0; d < D; ++d) out[((s.row_begin + i) * H + h) * D + d] = o[d] / l;
      }
    }
  }
  return out;
}

// Bound on |tensor-core out - fp32 out| for one row, from the two roundings. q: each q_d k_d moves
// by at most 2^-9 |q_d k_d|, so a score by delta <= 2^-9 scale sum_d |q_d k_d|; P: each weight by
// a factor in [1 - 2^-9, 1 + 2^-9]. Scaling the weights of a convex combination by factors in
// [e^-a, e^a] moves it by at most (e^{2a} - 1) max|v|; a = delta_max + 2^-8 (2^-8 also covers
// the kernel's bf16(p) taken from a running max that differs from the final one).
double row_bound(const Case& c, const std::vector<float>& q, const std::vector<bf16>& ck,
                 const std::vector<bf16>& cv, const AttentionSeq& s, int64_t i, int64_t h) {
  const int64_t H = c.shape.num_heads, KV = c.shape.num_kv_heads, D = c.shape.head_dim;
  const int64_t G = H / KV, W = KV * D;
  const float* qr = q.data() + ((s.row_begin + i) * H + h) * D;
  double delta = 0.0, vmax = 0.0;
  for (int64_t j = 0; j <= s.past_len + i; ++j) {
    const int64_t at = (s.cache_slot * c.max_len + j) * W + (h / G) * D;
    double sum = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      sum += std::fabs(double{qr[d]} * bf16_to_float(ck[at + d]));
      vmax = std::max(vmax, std::fabs(double{bf16_to_float(cv[at + d])}));
    }
    delta = std::max(delta, sum / std::sqrt(static_cast<double>(D)) / 512.0);
  }
  const double a = delta + 1.0 / 256.0;
  return (std::exp(2.0 * a) - 1.0) * vmax + 1e-5;
}

void run_tc_case(const Case& c, uint32_t seed, bool q_bf16_exact) {
  const Data d = moe::test::make_attention_inputs(c, seed, q_bf16_exact);
  const int64_t H = c.shape.num_heads, D = c.shape.head_dim, W = c.shape.num_kv_heads * D;
  const AttentionTcPlan plan = plan_attention_tc(c.seqs.data(), static_cast<int64_t>(c.seqs.size()),
                                                 c.shape, c.num_slots, c.max_len);
  check_schedule(c, plan);
  std::vector<bf16> ck = moe::test::to_bf16(d.cache_k), cv = moe::test::to_bf16(d.cache_v);
  append_rows(plan.append, W, d, ck, cv);
  std::vector<float> got(c.num_rows() * H * D, -7.0f);
  for (const AttentionTcItem& it : plan.items) emulate_tc_item(it, c, d.q, ck, cv, got);

  const std::vector<double> tight = rounded_reference(c, d.q, ck, cv);
  const std::vector<float> want = moe::test::reference_attention(c, d);
  double worst = 0.0;
  for (const AttentionSeq& s : c.seqs) {
    for (int64_t i = 0; i < s.num_new; ++i) {
      for (int64_t h = 0; h < H; ++h) {
        const double bound = row_bound(c, d.q, ck, cv, s, i, h);
        for (int64_t dd = 0; dd < D; ++dd) {
          const int64_t at = ((s.row_begin + i) * H + h) * D + dd;
          ASSERT_NEAR(got[at], want[at], bound) << "row " << s.row_begin + i << " head " << h;
          // Same roundings in double: only the running-max rounding of p and fp32 sums differ.
          ASSERT_NEAR(got[at], tight[at], 2.0 / 256.0 * 1.0 + 1e-5);
          worst = std::max(worst, std::fabs(double{got[at]} - want[at]));
        }
      }
    }
  }
  ::testing::Test::RecordProperty("max_abs_error_vs_fp32", std::to_string(worst));
}

TEST(AttentionTcEmulation, PrefillWithAndWithoutPrefixMatchesReference) {
  run_tc_case(prefill_case(), 31, /*q_bf16_exact=*/false);
}

TEST(AttentionTcEmulation, ShortPromptsTailTilesAndOtherGroupSizes) {
  // 1 token; a 63-token chunk over a 100-token prefix (tail tile); G = 3 (rows straddle tokens).
  run_tc_case({{{0, 1, 0, 0}, {1, 63, 100, 1}}, {32, 4, 128}, 2, 200}, 32, false);
  run_tc_case({{{0, 30, 7, 0}}, {12, 4, 128}, 1, 40}, 33, true);
}

// ---------------------------------------------------------------- fixed-grid decode

TEST(AttentionFixedGrid, RowLookupAndValidity) {
  const std::vector<AttentionSeq> seqs = {{2, 3, 10, 1}, {0, 1, 0, 0}, {5, 1, 99, 2}, {6, 1, 0, 7}};
  const int64_t slots = 3, max_len = 100;
  const FixedGridRow r0 = fixed_grid_row(seqs.data(), 4, 0, slots, max_len);
  EXPECT_TRUE(r0.valid);
  EXPECT_EQ(r0.pos, 0);
  EXPECT_EQ(r0.cache_row, 0);
  const FixedGridRow r3 = fixed_grid_row(seqs.data(), 4, 3, slots, max_len);
  EXPECT_TRUE(r3.valid);
  EXPECT_EQ(r3.pos, 11);
  EXPECT_EQ(r3.cache_row, 100);
  const FixedGridRow r5 = fixed_grid_row(seqs.data(), 4, 5, slots, max_len);
  EXPECT_TRUE(r5.valid);
  EXPECT_EQ(r5.pos, 99);                                                  // the last cache position
  EXPECT_FALSE(fixed_grid_row(seqs.data(), 4, 1, slots, max_len).valid);  // nobody's row
  EXPECT_FALSE(fixed_grid_row(seqs.data(), 4, 6, slots, max_len).valid);  // slot 7 of 3
  EXPECT_FALSE(fixed_grid_row(seqs.data(), 4, 9, slots, max_len).valid);  // nobody's row
  const AttentionSeq too_long{0, 2, 99, 0};
  EXPECT_FALSE(fixed_grid_row(&too_long, 1, 0, slots, max_len).valid);
}

TEST(AttentionFixedGrid, SplitsDependOnlyOnTheGridAndCoverTheCache) {
  for (int64_t rows : {1, 3, 64, 512}) {
    for (int64_t max_len : {1, 31, 256, 4096, 40960}) {
      for (int64_t sms : {1, 132}) {
        const FixedGridSplits sp = fixed_grid_splits(rows, 4, max_len, sms);
        ASSERT_GE(sp.num_splits, 1);
        ASSERT_LE(sp.num_splits, kFixedMaxSplits);
        ASSERT_EQ(sp.chunk % kFixedKeyTile, 0);
        ASSERT_GE(sp.num_splits * sp.chunk, max_len);
        ASSERT_LT((sp.num_splits - 1) * sp.chunk, std::max<int64_t>(max_len, 1));
        for (int64_t pos : {int64_t{0}, max_len / 2, max_len - 1}) {
          if (pos < 0) continue;
          const int64_t live = fixed_grid_live_splits(pos, sp.chunk);
          ASSERT_LE(live, sp.num_splits);
          int64_t next = 0;
          for (int64_t s = 0; s < sp.num_splits; ++s) {
            int64_t b = 0, e = 0;
            fixed_grid_split_keys(pos, sp.chunk, s, &b, &e);
            ASSERT_EQ(s < live, b < e) << "live splits are exactly the non-empty ones";
            if (b < e) {
              ASSERT_EQ(b, next);
              next = e;
            }
          }
          ASSERT_EQ(next, pos + 1);
        }
      }
    }
  }
  EXPECT_EQ(fixed_grid_splits(1, 4, 40960, 132).num_splits, kFixedMaxSplits);  // small batch: split
  EXPECT_EQ(fixed_grid_splits(512, 4, 40960, 132).num_splits, 1);              // big batch: not
}

// attention_fixed_grid_kernel + combine serially: every (row, kv head block, split) block with the
// kernel's early exit, fp32 online softmax over 32-key tiles; dead splits never write.
std::vector<float> emulate_fixed_grid(const Case& c, const Data& d, int64_t num_rows, int num_sms,
                                      std::vector<bf16>& ck, std::vector<bf16>& cv) {
  const int64_t H = c.shape.num_heads, KV = c.shape.num_kv_heads, D = c.shape.head_dim;
  const int64_t G = H / KV, W = KV * D;
  const int64_t n = static_cast<int64_t>(c.seqs.size());
  for (int64_t r = 0; r < num_rows; ++r) {  // kv_append_fixed_grid_kernel
    const FixedGridRow rr = fixed_grid_row(c.seqs.data(), n, r, c.num_slots, c.max_len);
    if (!rr.valid) continue;
    for (int64_t j = 0; j < W; ++j) {
      ck[(rr.cache_row + rr.pos) * W + j] = float_to_bf16(d.k[r * W + j]);
      cv[(rr.cache_row + rr.pos) * W + j] = float_to_bf16(d.v[r * W + j]);
    }
  }
  const int64_t head_blocks = (G + kFixedHeadsPerBlock - 1) / kFixedHeadsPerBlock;
  const FixedGridSplits sp = fixed_grid_splits(num_rows, KV * head_blocks, c.max_len, num_sms);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> po(num_rows * sp.num_splits * H * D, nan),
      pml(num_rows * sp.num_splits * H * 2, nan);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  for (int64_t r = 0; r < num_rows; ++r) {
    const FixedGridRow rr = fixed_grid_row(c.seqs.data(), n, r, c.num_slots, c.max_len);
    for (int64_t s = 0; s < sp.num_splits; ++s) {
      if (!rr.valid || s >= fixed_grid_live_splits(rr.pos, sp.chunk)) continue;
      int64_t kb0 = 0, ke = 0;
      fixed_grid_split_keys(rr.pos, sp.chunk, s, &kb0, &ke);
      const int64_t slot = fixed_grid_partial_slot(r, s, sp.num_splits);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t at0 = rr.cache_row * W + (h / G) * D;
        auto key = [&](int64_t j, int64_t dd) { return bf16_to_float(ck[at0 + j * W + dd]); };
        auto value = [&](int64_t j, int64_t dd) { return bf16_to_float(cv[at0 + j * W + dd]); };
        moe::test::EmulatedRow row(D);
        for (int64_t kb = kb0; kb < ke; kb += kFixedKeyTile) {
          moe::test::emulate_attend_tile(d.q.data() + (r * H + h) * D, D, kb,
                                         std::min<int64_t>(kFixedKeyTile, ke - kb), rr.pos, scale,
                                         key, value, row);
        }
        moe::test::store_emulated_partial(row, slot, H, h, po, pml);
      }
    }
  }
  std::vector<float> out(num_rows * H * D, -7.0f);
  for (int64_t r = 0; r < num_rows; ++r) {  // attention_fixed_grid_combine_kernel
    const FixedGridRow rr = fixed_grid_row(c.seqs.data(), n, r, c.num_slots, c.max_len);
    for (int64_t h = 0; h < H; ++h) {
      float* dst = out.data() + (r * H + h) * D;
      if (!rr.valid) {
        std::fill(dst, dst + D, 0.0f);
        continue;
      }
      const int64_t live = std::min(sp.num_splits, fixed_grid_live_splits(rr.pos, sp.chunk));
      moe::test::emulate_combine_splits(po, pml, fixed_grid_partial_slot(r, 0, sp.num_splits), live,
                                        H, h, D, dst);
    }
  }
  return out;
}

TEST(AttentionFixedGrid, DecodeEmulationMatchesReferenceOnAnySplitCount) {
  // Decode rows of different lengths (one at the last cache position), one 3-token chunk, GQA.
  const Case c{{{0, 1, 1500, 0}, {1, 1, 33, 1}, {2, 3, 700, 2}, {5, 1, 2047, 3}, {6, 1, 0, 4}},
               {16, 2, 64},
               5,
               2048};
  const Data d = moe::test::make_attention_inputs(c, 41, true);
  const std::vector<float> want = moe::test::reference_attention(c, d);
  for (int sms : {1, 16, 132}) {
    std::vector<bf16> ck = moe::test::to_bf16(d.cache_k), cv = moe::test::to_bf16(d.cache_v);
    const std::vector<float> got = emulate_fixed_grid(c, d, 7, sms, ck, cv);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 2e-5 + 1e-4 * std::fabs(want[i])) << i << " sms " << sms;
    }
  }
}

TEST(AttentionFixedGrid, UncoveredRowsAppendNothingAndGiveZero) {
  const Case c{{{1, 1, 4, 0}}, {4, 2, 32}, 1, 64};
  const Data d = moe::test::make_attention_inputs(c, 42, true);
  std::vector<bf16> ck = moe::test::to_bf16(d.cache_k), cv = moe::test::to_bf16(d.cache_v);
  const std::vector<float> got = emulate_fixed_grid(c, d, 3, 8, ck, cv);  // rows 0 and 2: nobody's
  for (int64_t j = 0; j < 4 * 32; ++j) {
    EXPECT_EQ(got[j], 0.0f);
    EXPECT_EQ(got[2 * 4 * 32 + j], 0.0f);
  }
  int64_t written = 0;
  for (size_t i = 0; i < ck.size(); ++i) written += std::isnan(bf16_to_float(ck[i])) ? 0 : 1;
  EXPECT_EQ(written, 5 * 2 * 32);  // 4 past positions + the one appended row
}

}  // namespace
}  // namespace moe::kernels::cuda
