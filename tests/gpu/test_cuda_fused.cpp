// The fused CUDA ops (qkv_projection, qk_norm_rope, add_rmsnorm, rmsnorm / linear with the bf16
// copies of their activations, expert_swiglu on both of its paths) against the
// CPU backend's default compositions of the ops they replace. Tolerances as in test_cuda_ops.cpp:
// fp32 rounding for the norms and rope (cos/sin of the device differ by a few ulp), per-element
// bf16 input bounds for the projections, and for the experts the CPU's bf16 mode, which rounds at
// the same points (kGroupedSwiglu), so only fp32 summation order separates them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cuda/fused_math.h"
#include "tests/common/backend_calls.h"

namespace moe::kernels::test {
namespace {

TEST_F(CudaOpsTest, FusedRmsNormWritesTheBf16CopyOfItsOutput) {
  std::mt19937 rng(41);
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{5, 2048}, {3, 37}, {2, 3000}}) {
    auto [x, w, want, d_x, d_w, d_y] = rmsnorm_case(rng, rows, dim);
    Buffer<bf16> d_yb(*gpu_, x.size());
    gpu_->rmsnorm(d_x.data(), d_w.data(), rows, dim, 1e-6f, d_y.data(), d_yb.data());
    const auto y = from_gpu(d_y);
    EXPECT_TRUE(close_to(y, want, 1e-6, 1e-5)) << rows << "x" << dim;
    const auto yb = from_gpu(d_yb);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(yb[i].bits, float_to_bf16(y[i]).bits) << i;
  }
}

TEST_F(CudaOpsTest, AddRmsNormMatchesAddThenRmsNorm) {
  std::mt19937 rng(42);
  const int64_t rows = 9, dim = 2048;
  const auto x = random_floats(rng, rows * dim, -3.0f, 3.0f);
  const auto delta = random_floats(rng, rows * dim, -1.0f, 1.0f);
  const auto w = random_bf16(rng, dim, 2.0f);
  std::vector<float> x_ref(x), y_ref(x.size());
  ref_->add_inplace(x_ref.data(), delta.data(), rows * dim);
  ref_->rmsnorm(x_ref.data(), w.data(), rows, dim, 1e-6f, y_ref.data());
  auto d_x = to_gpu(x), d_delta = to_gpu(delta);
  auto d_w = to_gpu(w);
  Buffer<float> d_y(*gpu_, x.size());
  Buffer<bf16> d_yb(*gpu_, x.size());
  gpu_->add_rmsnorm(d_x.data(), d_delta.data(), d_w.data(), rows, dim, 1e-6f, d_y.data(),
                    d_yb.data());
  EXPECT_EQ(from_gpu(d_x), x_ref);  // one fp32 add per element on both sides
  const auto y = from_gpu(d_y);
  EXPECT_TRUE(close_to(y, y_ref, 1e-6, 1e-5));
  const auto yb = from_gpu(d_yb);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(yb[i].bits, float_to_bf16(y[i]).bits) << i;
  // Without the bf16 copy.
  auto d_x2 = to_gpu(x);
  gpu_->add_rmsnorm(d_x2.data(), d_delta.data(), d_w.data(), rows, dim, 1e-6f, d_y.data(), nullptr);
  EXPECT_EQ(from_gpu(d_y), y);
}

TEST_F(CudaOpsTest, LinearReadsTheProducersBf16Copy) {
  std::mt19937 rng(43);
  const int64_t rows = 6, in = 512, out = 300;
  const auto x = random_floats(rng, rows * in);
  const auto w = random_bf16(rng, out * in, 0.05f);
  auto d_x = to_gpu(x);
  auto d_xb = to_gpu(to_bf16(x));
  auto d_w = to_gpu(w);
  Buffer<float> d_a(*gpu_, rows * out), d_b(*gpu_, rows * out);
  gpu_->linear(d_x.data(), d_w.data(), rows, in, out, d_a.data());
  gpu_->linear(d_x.data(), d_w.data(), rows, in, out, d_b.data(), d_xb.data());
  // The same GEMM on the same bf16 operands: bit-identical.
  EXPECT_EQ(from_gpu(d_a), from_gpu(d_b));
}

TEST_F(CudaOpsTest, QkvProjectionMatchesThreeLinears) {
  std::mt19937 rng(44);
  for (int64_t rows : {1, 7, 130}) {
    const int64_t hidden = 256, qw = 512, kvw = 64;
    const auto x = random_floats(rng, rows * hidden);
    const auto w = random_bf16(rng, (qw + 2 * kvw) * hidden, 0.05f);
    std::vector<float> q(rows * qw), k(rows * kvw), v(rows * kvw);
    ref_->qkv_projection(x.data(), nullptr, w.data(), rows, hidden, qw, kvw, q.data(), k.data(),
                         v.data());
    auto d_x = to_gpu(x);
    auto d_xb = to_gpu(to_bf16(x));
    auto d_w = to_gpu(w);
    for (const bf16* xb :
         {static_cast<const bf16*>(nullptr), static_cast<const bf16*>(d_xb.data())}) {
      Buffer<float> d_q(*gpu_, q.size()), d_k(*gpu_, k.size()), d_v(*gpu_, v.size());
      gpu_->qkv_projection(d_x.data(), xb, d_w.data(), rows, hidden, qw, kvw, d_q.data(),
                           d_k.data(), d_v.data());
      const std::vector<bf16> wq(w.begin(), w.begin() + qw * hidden);
      const std::vector<bf16> wk(w.begin() + qw * hidden, w.begin() + (qw + kvw) * hidden);
      const std::vector<bf16> wv(w.begin() + (qw + kvw) * hidden, w.end());
      EXPECT_TRUE(close_with(from_gpu(d_q), q, bf16_input_bound(x, wq, rows, hidden, qw), 0.0));
      EXPECT_TRUE(close_with(from_gpu(d_k), k, bf16_input_bound(x, wk, rows, hidden, kvw), 0.0));
      EXPECT_TRUE(close_with(from_gpu(d_v), v, bf16_input_bound(x, wv, rows, hidden, kvw), 0.0));
    }
  }
}

TEST_F(CudaOpsTest, QkNormRopeMatchesNormsThenRopesWithDevicePositions) {
  std::mt19937 rng(45);
  // 128 and 64: the fused kernel; 96 and 10: the separate kernels with the cached inv_freq.
  for (int64_t head_dim : {128, 64, 96, 10}) {
    const int64_t rows = 9, heads = 8, kv_heads = 2;
    const std::vector<int32_t> pos = {0, 1, 2, 100, 4095, 4096, 12345, 32000, 40959};
    const auto q = random_floats(rng, rows * heads * head_dim, -3.0f, 3.0f);
    const auto k = random_floats(rng, rows * kv_heads * head_dim, -3.0f, 3.0f);
    const auto qw = random_bf16(rng, head_dim, 2.0f), kw = random_bf16(rng, head_dim, 2.0f);
    std::vector<float> q_ref(q), k_ref(k);
    ref_->qk_norm_rope(q_ref.data(), k_ref.data(), qw.data(), kw.data(), pos.data(), rows, heads,
                       kv_heads, head_dim, 1e-6f, 1e6);
    auto d_q = to_gpu(q), d_k = to_gpu(k);
    auto d_qw = to_gpu(qw), d_kw = to_gpu(kw);
    auto d_pos = to_gpu(pos);
    for (int rep = 0; rep < 2; ++rep) {  // the second call reuses the cached inv_freq
      auto d_q2 = to_gpu(q), d_k2 = to_gpu(k);
      gpu_->qk_norm_rope(d_q2.data(), d_k2.data(), d_qw.data(), d_kw.data(), d_pos.data(), rows,
                         heads, kv_heads, head_dim, 1e-6f, 1e6);
      // rmsnorm's fp32 tolerance, then rope's (device cos/sin differ by a few ulp).
      EXPECT_TRUE(close_to(from_gpu(d_q2), q_ref, 1e-5, 2e-5)) << head_dim;
      EXPECT_TRUE(close_to(from_gpu(d_k2), k_ref, 1e-5, 2e-5)) << head_dim;
    }
  }
}

// expert_swiglu against the CPU backend in bf16 mode (same rounding points): counts per
// local slot, grouping and row_index in device memory; with or without the host copy of
// slot_begin (the host copy with large counts takes the grouped cuBLAS path).
void run_expert_case(Backend& gpu, int64_t hidden, int64_t inter,
                     const std::vector<int64_t>& counts, bool host_counts, uint32_t seed) {
  std::mt19937 rng(seed);
  BackendOptions options;
  options.kind = BackendKind::kCpu;
  options.compute_dtype = ComputeDtype::kBF16;
  auto cpu_bf16 = make_backend(options);
  const int64_t S = static_cast<int64_t>(counts.size());
  std::vector<int32_t> slot_begin(S + 1, 0);
  for (int64_t s = 0; s < S; ++s)
    slot_begin[s + 1] = slot_begin[s] + static_cast<int32_t>(counts[s]);
  const int64_t P = slot_begin[S];
  const int64_t max_pairs = P + 5;  // capacity beyond the pairs present
  const int64_t R = std::max<int64_t>(P, 1) + 3;
  const auto x = random_floats(rng, R * hidden);
  std::vector<int32_t> row_index(max_pairs, 0);
  for (auto& r : row_index) r = std::uniform_int_distribution<int32_t>(0, R - 1)(rng);

  std::vector<std::vector<bf16>> host_bufs;
  std::vector<Buffer<bf16>> dev_bufs;
  std::vector<ExpertWeights> host_w(S), dev_w(S);
  for (int64_t s = 0; s < S; ++s) {
    for (int p = 0; p < 3; ++p) {
      host_bufs.push_back(random_bf16(rng, inter * hidden, 0.1f));
      dev_bufs.push_back(upload_vector(gpu, host_bufs.back()));
    }
    host_w[s] = {host_bufs[3 * s].data(), host_bufs[3 * s + 1].data(), host_bufs[3 * s + 2].data()};
    dev_w[s] = {dev_bufs[3 * s].data(), dev_bufs[3 * s + 1].data(), dev_bufs[3 * s + 2].data()};
  }
  std::vector<ExpertGroup> groups;
  for (int64_t s = 0; s < S; ++s) groups.push_back({host_w[s], slot_begin[s], counts[s]});
  std::vector<float> want(max_pairs * hidden, 0.0f);
  moe::test::grouped_swiglu(*cpu_bf16, x.data(), hidden, inter, groups.data(), S, row_index.data(),
                            want.data());

  std::vector<ExpertGroup> dev_groups;
  for (int64_t s = 0; s < S; ++s) dev_groups.push_back({dev_w[s], slot_begin[s], counts[s]});
  const HostExpertGroups experts(gpu, dev_groups.data(), S, row_index.data(), host_counts,
                                 max_pairs);
  auto d_x = upload_vector(gpu, x);
  auto d_out = upload_vector(gpu, std::vector<float>(max_pairs * hidden, 0.0f));
  gpu.expert_swiglu(d_x.data(), hidden, inter, experts.batch(), d_out.data());
  const auto got = download_vector(gpu, d_out);
  // Rows past the pairs present are never written.
  for (int64_t i = P * hidden; i < max_pairs * hidden; ++i) ASSERT_EQ(got[i], 0.0f) << i;
  // Same rounding points; fp32 sum order differs, so a bf16 rounding can land a step apart:
  // about 2^-8 of an output, a few percent of the rms at most (tests/gpu_host FusedMath).
  EXPECT_TRUE(close_to(got, want, 3e-2 * rms(want), 1e-2))
      << hidden << "x" << inter << (host_counts ? " host counts" : " device counts");
  // The rows as bf16 values (x_bf16, x null), as the dispatcher hands over bf16 rows: the
  // experts round their input, so the same bits.
  std::vector<bf16> xb(x.size());
  for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
  auto d_xb = upload_vector(gpu, xb);
  auto d_out_b = upload_vector(gpu, std::vector<float>(max_pairs * hidden, 0.0f));
  gpu.expert_swiglu(nullptr, hidden, inter, experts.batch(), d_out_b.data(), d_xb.data());
  EXPECT_EQ(download_vector(gpu, d_out_b), got)
      << "bf16 rows, " << hidden << "x" << inter << (host_counts ? " host counts" : "");
  // bf16 output rows (out_bf16, out null), as MoeLayer takes them: the experts round their
  // output, so exactly the values of the fp32 rows; rows past the pairs present stay untouched.
  const bf16 untouched = float_to_bf16(-3.0f);
  auto d_bout = upload_vector(gpu, std::vector<bf16>(max_pairs * hidden, untouched));
  gpu.expert_swiglu(nullptr, hidden, inter, experts.batch(), nullptr, d_xb.data(), d_bout.data());
  const auto bout = download_vector(gpu, d_bout);
  for (int64_t i = 0; i < P * hidden; ++i) {
    ASSERT_EQ(bf16_to_float(bout[i]), got[i])
        << "bf16 output " << i << ", " << hidden << "x" << inter;
  }
  for (int64_t i = P * hidden; i < max_pairs * hidden; ++i) ASSERT_EQ(bout[i].bits, untouched.bits);
}

TEST_F(CudaOpsTest, ExpertSwigluSmallKernelWithDeviceCounts) {
  run_expert_case(*gpu_, 256, 96, {0, 1, 3, 0, 2, 0, 0, 1}, false, 51);
  // One slot with more rows than a pass (three passes), counts unknown on the host.
  run_expert_case(*gpu_, 128, 64, {19, 0, 40}, false, 52);
}

TEST_F(CudaOpsTest, ExpertSwigluSmallKernelWithHostCounts) {
  run_expert_case(*gpu_, 256, 96, {2, 0, 16, 1}, true, 53);
}

TEST_F(CudaOpsTest, ExpertSwigluQwenShapesBatchOne) {
  std::vector<int64_t> counts(32, 0);
  for (int s : {1, 4, 5, 9, 17, 20, 26, 31}) counts[s] = 1;
  run_expert_case(*gpu_, 2048, 768, counts, false, 54);
  run_expert_case(*gpu_, 2048, 768, counts, true, 55);
}

TEST_F(CudaOpsTest, ExpertSwigluGroupedPathWithDeviceRowIndex) {
  // More than kExpertSmallMaxRows rows in a slot with host counts: the cuBLAS grouped GEMM.
  ASSERT_GT(int64_t{40}, cuda::kExpertSmallMaxRows);
  run_expert_case(*gpu_, 256, 128, {0, 5, 40, 17, 0}, true, 56);
  // Widths that are not 16-byte chunks: the grouped path, counts fetched from the device.
  run_expert_case(*gpu_, 100, 36, {3, 1, 4}, false, 57);
}

TEST_F(CudaOpsTest, ExpertSwigluWithNoRowsWritesNothing) {
  run_expert_case(*gpu_, 64, 32, {0, 0, 0}, false, 58);
  run_expert_case(*gpu_, 64, 32, {0, 0, 0}, true, 59);
}

}  // namespace
}  // namespace moe::kernels::test
