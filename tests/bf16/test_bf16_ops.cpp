// The CPU backend's bf16 compute mode, op by op, against the naive reference ops
// (kernels/cpu/reference.h): tolerances follow where rounding.h rounds (per-element bf16 input
// bounds for linear, rms-scaled bounds for the SwiGLU chains); the ops that do not round must be
// bit-identical to fp32 mode; backend selection and the primitive cache.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bf16_reference_backend.h"
#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "kernels/cpu/bf16_ops.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference.h"
#include "tests/common/backend_calls.h"
#include "tests/common/test_data.h"

namespace moe::kernels::test {
namespace {

using moe::test::random_bf16;
using moe::test::random_floats;

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

// |dy| <= 2^-8 sum_i |x_i w_i| + 1e-6 per output: rounding x moves each product by <= 2^-9.
std::vector<double> linear_bound(const std::vector<float>& x, const std::vector<bf16>& w,
                                 int64_t rows, int64_t in, int64_t out) {
  std::vector<double> b(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0;
      for (int64_t i = 0; i < in; ++i) s += std::fabs(x[r * in + i] * bf16_to_float(w[o * in + i]));
      b[r * out + o] = s / 256.0 + 1e-6;
    }
  }
  return b;
}

::testing::AssertionResult within(const std::vector<float>& got, const std::vector<float>& want,
                                  const std::vector<double>& abs_tol) {
  return moe::test::elementwise_close(
      got.data(), want.data(), static_cast<int64_t>(got.size()),
      [&](int64_t i) { return abs_tol[static_cast<size_t>(i)]; }, 0.0);
}

// Both bf16 GEMM routes this machine has: oneDNN (where it has a bf16 matmul) and the fallback.
std::vector<std::unique_ptr<Backend>> bf16_backends() {
  std::vector<std::unique_ptr<Backend>> v;
  v.push_back(make_cpu_backend(ComputeDtype::kBF16));
  v.push_back(make_cpu_bf16_fallback_backend());
  return v;
}

TEST(Bf16Ops, LinearStaysWithinBf16InputRoundingOfTheFp32Reference) {
  std::mt19937 rng(11);
  for (auto& be : bf16_backends()) {
    for (auto [rows, in, out] : {std::tuple<int64_t, int64_t, int64_t>{1, 512, 300},
                                 {3, 256, 64},
                                 {9, 256, 100},
                                 {37, 96, 1000},
                                 {300, 64, 48}}) {
      const auto x = random_floats(rng, rows * in, -2.0f, 2.0f);
      const auto w = random_bf16(rng, out * in, 0.1f);
      std::vector<float> want(rows * out), got(rows * out), want_rounded(rows * out);
      cpu::reference::linear(x.data(), w.data(), rows, in, out, want.data());
      be->linear(x.data(), w.data(), rows, in, out, got.data());
      EXPECT_TRUE(within(got, want, linear_bound(x, w, rows, in, out)))
          << rows << "x" << in << "->" << out;
      // Against the reference on bf16-rounded x only fp32 summation order is left.
      const auto xr = moe::test::rounded_to_bf16(x);
      cpu::reference::linear(xr.data(), w.data(), rows, in, out, want_rounded.data());
      std::vector<double> tight(want.size());
      const auto loose = linear_bound(x, w, rows, in, out);
      for (size_t i = 0; i < tight.size(); ++i) tight[i] = loose[i] * 256.0 * 1e-6 + 1e-6;
      EXPECT_TRUE(within(got, want_rounded, tight)) << rows << "x" << in << "->" << out;
    }
  }
}

struct MlpCase {
  int64_t rows, hidden, inter;
};

TEST(Bf16Ops, DenseAndGroupedSwigluMatchTheBf16RoundedReference) {
  std::mt19937 rng(12);
  Bf16ReferenceBackend gpu_numerics;
  for (auto& be : bf16_backends()) {
    for (MlpCase c : {MlpCase{1, 128, 64}, MlpCase{7, 64, 96}, MlpCase{40, 256, 128}}) {
      const auto x = random_floats(rng, c.rows * c.hidden, -2.0f, 2.0f);
      const auto g = random_bf16(rng, c.inter * c.hidden, 0.1f);
      const auto u = random_bf16(rng, c.inter * c.hidden, 0.1f);
      const auto d = random_bf16(rng, c.hidden * c.inter, 0.1f);
      const ExpertWeights w{g.data(), u.data(), d.data()};
      std::vector<float> got(c.rows * c.hidden), want(got.size()), fp32(got.size());
      be->swiglu_mlp(x.data(), w, c.rows, c.hidden, c.inter, got.data());
      gpu_numerics.swiglu_mlp(x.data(), w, c.rows, c.hidden, c.inter, want.data());
      cpu::reference::swiglu_mlp(x.data(), w, c.rows, c.hidden, c.inter, fp32.data());
      // A flipped activation rounding moves one product by one bf16 ulp (2^-8 relative).
      const double scale = rms(want);
      EXPECT_TRUE(within(got, want, std::vector<double>(got.size(), scale * 2e-3)))
          << "dense " << c.rows << " rows";
      EXPECT_TRUE(within(got, fp32, std::vector<double>(got.size(), scale * 3e-2)))
          << "dense vs fp32 " << c.rows << " rows";

      // The same rows as two expert groups (the second one reading rows in reverse).
      std::vector<int32_t> row_index(2 * c.rows);
      for (int64_t r = 0; r < c.rows; ++r) {
        row_index[r] = static_cast<int32_t>(r);
        row_index[c.rows + r] = static_cast<int32_t>(c.rows - 1 - r);
      }
      const ExpertWeights w2{u.data(), g.data(), d.data()};
      const ExpertGroup groups[2] = {{w, 0, c.rows}, {w2, c.rows, c.rows}};
      std::vector<float> gout(2 * c.rows * c.hidden), gwant(gout.size());
      moe::test::grouped_swiglu(*be, x.data(), c.hidden, c.inter, groups, 2, row_index.data(),
                                gout.data());
      moe::test::grouped_swiglu(gpu_numerics, x.data(), c.hidden, c.inter, groups, 2,
                                row_index.data(), gwant.data());
      // Stage roundings: gate/up/act/out may each flip one bf16 ulp.
      EXPECT_TRUE(within(gout, gwant, std::vector<double>(gout.size(), rms(gwant) * 1.6e-2)))
          << "grouped " << c.rows << " rows";
      // Every output of a bf16 down GEMM is a bf16 value.
      for (float v : gout) ASSERT_EQ(v, round_to_bf16(v)) << "grouped output not bf16";
    }
  }
}

// The experts given their rows as bf16 values (x_bf16, x null: how the dispatcher hands over
// bf16 rows) give the bits of the fp32 rows they came from, since the experts round their input
// (rounding.h); asked for bf16 output rows (out_bf16, out null: how MoeLayer takes them) they
// write exactly the values of the fp32 rows, which the experts round to bf16; an fp32-compute
// backend refuses bf16 rows either way.
TEST(Bf16Ops, GroupedSwigluOnBf16RowsGivesTheBitsOfTheFp32Rows) {
  std::mt19937 rng(15);
  Bf16ReferenceBackend gpu_numerics;
  std::vector<std::unique_ptr<Backend>> backends = bf16_backends();
  const int64_t hidden = 64, inter = 48, rows = 9;
  const auto x = random_floats(rng, rows * hidden, -2.0f, 2.0f);
  std::vector<bf16> xb(x.size());
  for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
  const auto g = random_bf16(rng, inter * hidden, 0.1f);
  const auto u = random_bf16(rng, inter * hidden, 0.1f);
  const auto d = random_bf16(rng, hidden * inter, 0.1f);
  const ExpertGroup groups[2] = {{{g.data(), u.data(), d.data()}, 0, 5},
                                 {{u.data(), g.data(), d.data()}, 5, 7}};
  const std::vector<int32_t> row_index = {8, 0, 3, 3, 7, 1, 2, 8, 5, 0, 6, 4};  // repeats too
  std::vector<Backend*> all = {&gpu_numerics};
  for (auto& be : backends) all.push_back(be.get());
  for (Backend* be : all) {
    SCOPED_TRACE(be->name());
    std::vector<float> from_f32(12 * hidden), from_bf16(from_f32.size(), -1.0f);
    moe::test::grouped_swiglu(*be, x.data(), hidden, inter, groups, 2, row_index.data(),
                              from_f32.data());
    moe::test::grouped_swiglu(*be, nullptr, hidden, inter, groups, 2, row_index.data(),
                              from_bf16.data(), true, xb.data());
    EXPECT_EQ(from_bf16, from_f32);
    for (const bool bf16_in : {false, true}) {
      std::vector<bf16> out_b(from_f32.size(), float_to_bf16(-1.0f));
      moe::test::grouped_swiglu(*be, bf16_in ? nullptr : x.data(), hidden, inter, groups, 2,
                                row_index.data(), nullptr, true, bf16_in ? xb.data() : nullptr,
                                out_b.data());
      std::vector<float> widened(out_b.size());
      for (size_t i = 0; i < out_b.size(); ++i) widened[i] = bf16_to_float(out_b[i]);
      EXPECT_EQ(widened, from_f32) << "bf16 output rows, bf16 input " << bf16_in;
    }
  }
  auto fp32 = make_cpu_backend(ComputeDtype::kF32);
  std::vector<float> out(12 * hidden);
  EXPECT_THROW(moe::test::grouped_swiglu(*fp32, nullptr, hidden, inter, groups, 2, row_index.data(),
                                         out.data(), true, xb.data()),
               moe::Error);
  std::vector<bf16> out_b(out.size());
  try {
    moe::test::grouped_swiglu(*fp32, x.data(), hidden, inter, groups, 2, row_index.data(), nullptr,
                              true, nullptr, out_b.data());
    ADD_FAILURE() << "an fp32-compute backend took bf16 output rows";
  } catch (const moe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16 output rows need bf16 compute"), std::string::npos)
        << e.what();
  }
}

TEST(Bf16Ops, AttentionReadsBf16RoundedKeysAndValuesFromTheCache) {
  std::mt19937 rng(13);
  const AttentionShape shape{4, 2, 16};
  const int64_t T = 12, max_len = 16, kvw = shape.num_kv_heads * shape.head_dim;
  const auto q = random_floats(rng, T * shape.num_heads * shape.head_dim);
  const auto k = random_floats(rng, T * kvw);
  const auto v = random_floats(rng, T * kvw);
  const AttentionSeq seq{0, T, 0, 0};
  auto run = [&](Backend& be, const std::vector<float>& kk, const std::vector<float>& vv,
                 std::vector<float>& kc, std::vector<float>& out) {
    std::vector<float> vc(max_len * kvw, 0.0f);
    kc.assign(max_len * kvw, 0.0f);
    out.assign(q.size(), 0.0f);
    moe::test::attention(be, q.data(), kk.data(), vv.data(), &seq, 1, shape,
                         KvCacheView{kc.data(), vc.data(), 1, max_len, KvDtype::kF32}, out.data());
  };
  auto bf16 = make_cpu_backend(ComputeDtype::kBF16);
  auto fp32 = make_cpu_backend(ComputeDtype::kF32);
  std::vector<float> kc_b, out_b, kc_f, out_f;
  run(*bf16, k, v, kc_b, out_b);
  run(*fp32, moe::test::rounded_to_bf16(k), moe::test::rounded_to_bf16(v), kc_f, out_f);
  EXPECT_EQ(kc_b, kc_f);    // the cache holds round(k)
  EXPECT_EQ(out_b, out_f);  // and attention is fp32 mode's on those values, bit for bit
  for (int64_t i = 0; i < T * kvw; ++i) ASSERT_EQ(kc_b[i], round_to_bf16(k[i]));
  std::vector<float> kc_r, out_r;
  Bf16ReferenceBackend gpu_numerics;
  run(gpu_numerics, k, v, kc_r, out_r);
  EXPECT_TRUE(moe::test::elementwise_close(
      out_b.data(), out_r.data(), static_cast<int64_t>(out_b.size()), [](int64_t) { return 1e-6; },
      1e-5));
}

TEST(Bf16Ops, OpsThatDoNotRoundAreBitIdenticalToFp32Mode) {
  std::mt19937 rng(14);
  auto bf16 = make_cpu_backend(ComputeDtype::kBF16);
  auto fp32 = make_cpu_backend(ComputeDtype::kF32);
  const int64_t rows = 5, dim = 64, experts = 16, k = 4;
  const auto x = random_floats(rng, rows * dim, -3.0f, 3.0f);
  const auto w = random_bf16(rng, dim, 2.0f);
  std::vector<float> a(x.size()), b(x.size());
  bf16->rmsnorm(x.data(), w.data(), rows, dim, 1e-6f, a.data());
  fp32->rmsnorm(x.data(), w.data(), rows, dim, 1e-6f, b.data());
  EXPECT_EQ(a, b);
  // q [rows, 4 heads, 16] and k [rows, 2 heads, 16]: per-head norm, then rope.
  std::vector<int32_t> pos = {0, 3, 17, 100, 4095};
  std::vector<float> qa = x, qb = x, ka(x.begin(), x.begin() + rows * 32), kb = ka;
  bf16->qk_norm_rope(qa.data(), ka.data(), w.data(), w.data() + 16, pos.data(), rows, 4, 2, 16,
                     1e-6f, 1e6);
  fp32->qk_norm_rope(qb.data(), kb.data(), w.data(), w.data() + 16, pos.data(), rows, 4, 2, 16,
                     1e-6f, 1e6);
  EXPECT_EQ(qa, qb);
  EXPECT_EQ(ka, kb);
  const auto logits = random_floats(rng, rows * experts, -4.0f, 4.0f);
  std::vector<int32_t> ia(rows * k), ib(rows * k);
  std::vector<float> wa(rows * k), wb(rows * k);
  bf16->router_topk(logits.data(), rows, experts, k, true, ia.data(), wa.data());
  fp32->router_topk(logits.data(), rows, experts, k, true, ib.data(), wb.data());
  EXPECT_EQ(ia, ib);
  EXPECT_EQ(wa, wb);
}

TEST(Bf16Backend, SelectionAndComputeDtypeAccessors) {
  EXPECT_EQ(make_backend("cpu", 0)->compute_dtype(), ComputeDtype::kF32);
  EXPECT_EQ(
      make_backend(BackendOptions{BackendKind::kCpu, 0, ComputeDtype::kBF16})->compute_dtype(),
      ComputeDtype::kBF16);
  EXPECT_EQ(make_backend(BackendOptions{BackendKind::kCpu, 0, ComputeDtype::kF32})->compute_dtype(),
            ComputeDtype::kF32);
  EXPECT_EQ(parse_compute_dtype("bf16"), ComputeDtype::kBF16);
  EXPECT_EQ(parse_compute_dtype("fp32"), ComputeDtype::kF32);
  EXPECT_STREQ(compute_dtype_name(ComputeDtype::kBF16), "bf16");
  try {
    parse_compute_dtype("fp16");
    FAIL() << "fp16 accepted";
  } catch (const moe::Error& e) {
    EXPECT_EQ(e.subsystem(), "config");
    EXPECT_NE(e.message().find("'fp16'"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("fp32 or bf16"), std::string::npos) << e.message();
  }
  // The CUDA backend has bf16 GEMMs only: fp32 is refused whether or not CUDA is built in.
  try {
    make_backend(BackendOptions{BackendKind::kCuda, 0, ComputeDtype::kF32});
    FAIL() << "cuda fp32 accepted";
  } catch (const moe::Error& e) {
    EXPECT_NE(e.message().find("bf16 only"), std::string::npos) << e.message();
  }
}

TEST(Bf16Backend, OnednnPrimitivesAreCreatedOncePerShapeBucket) {
  if (!cpu::onednn_info().has_bf16_matmul) {
    GTEST_SKIP() << "oneDNN has no bf16 matmul on this CPU (ISA " << cpu::onednn_info().isa << ")";
  }
  cpu::Bf16Ops ops;
  ASSERT_TRUE(ops.uses_onednn());
  std::mt19937 rng(15);
  const auto w = random_bf16(rng, 64 * 128, 0.1f);
  const auto x = random_floats(rng, 20 * 128);
  std::vector<float> y(20 * 64);
  ops.linear(x.data(), w.data(), 10, 128, 64, y.data());
  EXPECT_EQ(ops.num_primitives(), 1);
  for (int64_t rows : {10, 11, 16, 9}) ops.linear(x.data(), w.data(), rows, 128, 64, y.data());
  EXPECT_EQ(ops.num_primitives(), 1);  // 9..16 rows share the 16-row primitive
  ops.linear(x.data(), w.data(), 20, 128, 64, y.data());
  EXPECT_EQ(ops.num_primitives(), 2);
  EXPECT_EQ(cpu::OnednnBf16Gemm::padded_rows(3), 3);
  EXPECT_EQ(cpu::OnednnBf16Gemm::padded_rows(17), 32);
  EXPECT_EQ(cpu::OnednnBf16Gemm::padded_rows(257), 320);
}

}  // namespace
}  // namespace moe::kernels::test
