// The CUDA attention paths of attention_tc.cu against the host reference backend and against
// each other (skips without a device):
// - prefill batches whose long sequences (>= kAttnTcMinNewTokens new tokens, head_dim 128) run on
//   the tensor-core kernel: prompts of 1, 63, 64, 200 and 1000 tokens, fresh and continuing a
//   cached prefix (chunked prefill), several per batch, GQA 32/4. Tolerance from the two bf16
//   roundings of that path (q for QK^T, P for PV), derived in tensor_core_bound();
// - attention() without the host copy of the sequences (the graph-safe kernels) against it with
//   the copy on the same batch, and captured once in a CUDA graph, then replayed with new lengths
//   written into the device seqs.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cuda/attention_tc_math.h"
#include "tests/common/backend_calls.h"
#include "tests/gpu_host/attention_case.h"

namespace moe::kernels::test {
namespace {

using Batch = moe::test::AttentionCase;

// q not bf16-exact (the tensor-core path rounds it); k, v and the cache bf16-exact.
moe::test::AttentionInputs make_inputs(const Batch& b, uint32_t seed, bool fill_all = false) {
  return moe::test::make_attention_inputs(b, seed, /*q_bf16_exact=*/false, fill_all);
}

// Per-element bound of |tensor-core out - fp32 out| (|k|, |v| <= 1 here). Rounding q to bf16
// moves each product q_d k_d by <= 2^-9 |q_d k_d|, so a score by delta <= 2^-9 scale sum_d |q_d|;
// rounding P moves each weight by a factor within 1 +- 2^-9, and the kernel takes bf16(p) against
// its running max, which costs one more 2^-9: a = delta + 2^-8 in all. Weights of a convex
// combination scaled by factors in [e^-a, e^a] move it by at most (e^{2a} - 1) max|v|. Plus fp32
// slack for the summation order.
std::vector<double> tensor_core_bound(const Batch& b, const std::vector<float>& q) {
  const int64_t H = b.shape.num_heads, D = b.shape.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> bound(q.size(), 2e-5);
  for (const auto& s : b.seqs) {
    for (int64_t i = 0; i < s.num_new; ++i) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t at = ((s.row_begin + i) * H + h) * D;
        double l1 = 0.0;
        for (int64_t d = 0; d < D; ++d) l1 += std::fabs(q[at + d]);
        const double a = l1 * scale / 512.0 + 1.0 / 256.0;
        for (int64_t d = 0; d < D; ++d) bound[at + d] = std::expm1(2.0 * a) + 2e-5;
      }
    }
  }
  return bound;
}

class CudaAttentionTest : public CudaOpsTest {
 protected:
  // attention() on both backends; checks the outputs within `bound` and the caches bit for bit.
  void run_prefill(const Batch& b, uint32_t seed) {
    const moe::test::AttentionInputs in = make_inputs(b, seed);
    const int64_t H = b.shape.num_heads, D = b.shape.head_dim;
    const int64_t T = b.num_rows();
    std::vector<float> want(T * H * D, 0.0f), rk(in.cache_k), rv(in.cache_v);
    moe::test::attention(*ref_, in.q.data(), in.k.data(), in.v.data(), b.seqs.data(),
                         static_cast<int64_t>(b.seqs.size()), b.shape,
                         {rk.data(), rv.data(), b.num_slots, b.max_len}, want.data());
    auto d_q = to_gpu(in.q), d_k = to_gpu(in.k), d_v = to_gpu(in.v);
    auto d_ck = to_gpu(to_bf16(in.cache_k)), d_cv = to_gpu(to_bf16(in.cache_v));
    Buffer<float> d_out(*gpu_, want.size());
    gpu_->fill_zero(d_out.data(), d_out.size_bytes());
    moe::test::attention(*gpu_, d_q.data(), d_k.data(), d_v.data(), b.seqs.data(),
                         static_cast<int64_t>(b.seqs.size()), b.shape,
                         {d_ck.data(), d_cv.data(), b.num_slots, b.max_len, KvDtype::kBF16},
                         d_out.data());
    EXPECT_TRUE(close_with(from_gpu(d_out), want, tensor_core_bound(b, in.q), 0.0));
    const auto got_k = to_floats(from_gpu(d_ck)), got_v = to_floats(from_gpu(d_cv));
    for (size_t i = 0; i < rk.size(); ++i) {
      ASSERT_TRUE((std::isnan(rk[i]) && std::isnan(got_k[i])) || rk[i] == got_k[i]) << i;
      ASSERT_TRUE((std::isnan(rv[i]) && std::isnan(got_v[i])) || rv[i] == got_v[i]) << i;
    }
  }
};

const AttentionShape kQwen{32, 4, 128};

TEST_F(CudaAttentionTest, TensorCorePrefillFreshPromptsMatchCpu) {
  // 1 and 63 tokens stay on the CUDA-core kernel, 64, 200 and 1000 take the tensor cores; one
  // batch, rows out of sequence order.
  run_prefill(
      {{{1328, 1, 0, 0}, {1265, 63, 0, 1}, {1201, 64, 0, 2}, {1001, 200, 0, 3}, {1, 1000, 0, 4}},
       kQwen,
       5,
       1024},
      51);
}

TEST_F(CudaAttentionTest, TensorCoreChunkedPrefillOverACachedPrefixMatchesCpu) {
  // Second chunks of prompts (prefix already in the cache) beside decode rows.
  run_prefill({{{0, 200, 300, 0},
                {200, 64, 1, 1},
                {264, 1000, 24, 2},
                {1264, 63, 700, 3},
                {1327, 1, 999, 4},
                {1328, 1, 5, 5}},
               kQwen,
               6,
               1100},
              52);
}

TEST_F(CudaAttentionTest, TensorCoreOtherGroupSizesMatchCpu) {
  // G = 1 (no GQA) and G = 3: the tile's rows straddle tokens differently.
  run_prefill({{{0, 100, 17, 0}, {100, 65, 0, 1}}, {4, 4, 128}, 2, 200}, 53);
  run_prefill({{{0, 150, 3, 1}, {150, 70, 30, 0}}, {12, 4, 128}, 2, 200}, 54);
}

// Not a check: the time of one 4096-token Qwen3-30B-A3B prefill layer (tensor cores), printed for
// the record (a FlashAttention-2 class kernel needs ~1 ms on an H100/H200).
TEST_F(CudaAttentionTest, PrefillTimeOfA4kPromptIsPrinted) {
  const int64_t T = 4096, H = kQwen.num_heads, W = kQwen.num_kv_heads * kQwen.head_dim;
  const AttentionSeq seq{0, T, 0, 0};
  Buffer<float> d_q(*gpu_, T * H * kQwen.head_dim), d_k(*gpu_, T * W), d_v(*gpu_, T * W);
  Buffer<float> d_out(*gpu_, T * H * kQwen.head_dim);
  Buffer<bf16> d_ck(*gpu_, T * W), d_cv(*gpu_, T * W);
  cuda().fill_random_f32(d_q.data(), static_cast<int64_t>(d_q.size()), 1, 1.0f);
  cuda().fill_random_f32(d_k.data(), static_cast<int64_t>(d_k.size()), 2, 1.0f);
  cuda().fill_random_f32(d_v.data(), static_cast<int64_t>(d_v.size()), 3, 1.0f);
  const KvCacheView cache{d_ck.data(), d_cv.data(), 1, T, KvDtype::kBF16};
  auto d_seq = to_gpu(std::vector<AttentionSeq>{seq});
  const AttentionBatch batch{d_seq.data(), &seq, 1, T};
  for (int i = 0; i < 2; ++i) {  // warm-up (plan, smem opt-in)
    gpu_->attention(d_q.data(), d_k.data(), d_v.data(), batch, kQwen, cache, d_out.data());
  }
  gpu_->synchronize();
  const int reps = 10;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) {
    gpu_->attention(d_q.data(), d_k.data(), d_v.data(), batch, kQwen, cache, d_out.data());
  }
  gpu_->synchronize();
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
      reps;
  const double tflops = 4.0 * T * (T + 1) / 2.0 * kQwen.head_dim * H / (ms * 1e-3) / 1e12;
  std::printf("attention prefill, 4096 tokens, 32/4 heads x 128: %.3f ms/layer (%.1f TFLOP/s)\n",
              ms, tflops);
  const auto out = from_gpu(d_out);
  for (size_t i = 0; i < out.size(); i += 997) ASSERT_TRUE(std::isfinite(out[i])) << i;
}

// attention() without the host's copy of the sequences (the graph-safe kernels) against
// attention() with it (the planned kernels) for the same batch (both fp32 CUDA-core math on
// decode-sized rows): close to fp32 rounding; caches equal bit for bit.
TEST_F(CudaAttentionTest, GraphSafeMatchesPlannedAndReplaysFromAGraph) {
  const int64_t slots = 4, max_len = 4096;
  Batch b{{{0, 1, 4000, 0}, {1, 1, 33, 1}, {2, 3, 700, 2}, {5, 1, 0, 3}}, kQwen, slots, max_len};
  const int64_t H = kQwen.num_heads, D = kQwen.head_dim, rows = 6;
  const moe::test::AttentionInputs in = make_inputs(b, 61, /*fill_all=*/true);
  auto d_q = to_gpu(in.q), d_k = to_gpu(in.k), d_v = to_gpu(in.v);
  const std::vector<bf16> ck0 = to_bf16(in.cache_k), cv0 = to_bf16(in.cache_v);

  auto run_attention = [&](const std::vector<AttentionSeq>& seqs, std::vector<bf16>* cache_k) {
    auto d_ck = to_gpu(ck0), d_cv = to_gpu(cv0);
    Buffer<float> d_out(*gpu_, rows * H * D);
    moe::test::attention(*gpu_, d_q.data(), d_k.data(), d_v.data(), seqs.data(),
                         static_cast<int64_t>(seqs.size()), kQwen,
                         {d_ck.data(), d_cv.data(), slots, max_len, KvDtype::kBF16}, d_out.data());
    if (cache_k != nullptr) *cache_k = from_gpu(d_ck);
    return from_gpu(d_out);
  };

  std::vector<bf16> want_ck, got_ck;
  const std::vector<float> want = run_attention(b.seqs, &want_ck);
  auto d_seqs = to_gpu(b.seqs);
  auto d_ck = to_gpu(ck0), d_cv = to_gpu(cv0);
  Buffer<float> d_out(*gpu_, rows * H * D);
  const KvCacheView cache{d_ck.data(), d_cv.data(), slots, max_len, KvDtype::kBF16};
  const AttentionBatch device_only{d_seqs.data(), nullptr, static_cast<int64_t>(b.seqs.size()),
                                   rows};
  gpu_->attention(d_q.data(), d_k.data(), d_v.data(), device_only, kQwen, cache, d_out.data());
  EXPECT_TRUE(close_to(from_gpu(d_out), want, 2e-5, 1e-4));
  got_ck = from_gpu(d_ck);
  for (size_t i = 0; i < want_ck.size(); ++i) {
    ASSERT_EQ(got_ck[i].bits, want_ck[i].bits) << i;
  }

  // Capture one step, then replay it with other lengths (and slots) written into d_seqs.
  cudaStream_t stream = cuda().stream();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  gpu_->attention(d_q.data(), d_k.data(), d_v.data(), device_only, kQwen, cache, d_out.data());
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  const std::vector<AttentionSeq> next = {
      {0, 2, 10, 3}, {2, 1, 4095, 0}, {3, 2, 2, 1}, {5, 1, 1500, 2}};
  gpu_->upload(d_seqs.data(), next.data(), next.size() * sizeof(AttentionSeq));
  gpu_->upload(d_ck.data(), ck0.data(), ck0.size() * sizeof(bf16));
  gpu_->upload(d_cv.data(), cv0.data(), cv0.size() * sizeof(bf16));
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  gpu_->synchronize();
  const std::vector<float> want_next = run_attention(next, &want_ck);
  EXPECT_TRUE(close_to(from_gpu(d_out), want_next, 2e-5, 1e-4));
  got_ck = from_gpu(d_ck);
  for (size_t i = 0; i < want_ck.size(); ++i) {
    ASSERT_EQ(got_ck[i].bits, want_ck[i].bits) << i;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_F(CudaAttentionTest, GraphSafeRowsNoSequenceCoversAreZero) {
  const AttentionShape shape{8, 2, 64};
  const std::vector<AttentionSeq> seqs = {{1, 1, 9, 0}};
  std::mt19937 rng(62);
  const auto q = random_floats(rng, 3 * 8 * 64), k = random_floats(rng, 3 * 2 * 64),
             v = random_floats(rng, 3 * 2 * 64);
  auto d_q = to_gpu(q), d_k = to_gpu(k), d_v = to_gpu(v);
  auto d_seqs = to_gpu(seqs);
  Buffer<bf16> d_ck(*gpu_, 32 * 128), d_cv(*gpu_, 32 * 128);
  gpu_->fill_zero(d_ck.data(), d_ck.size_bytes());
  gpu_->fill_zero(d_cv.data(), d_cv.size_bytes());
  Buffer<float> d_out(*gpu_, 3 * 8 * 64);
  gpu_->attention(d_q.data(), d_k.data(), d_v.data(), {d_seqs.data(), nullptr, 1, 3}, shape,
                  {d_ck.data(), d_cv.data(), 1, 32, KvDtype::kBF16}, d_out.data());
  const auto out = from_gpu(d_out);
  for (int64_t j = 0; j < 8 * 64; ++j) {
    EXPECT_EQ(out[j], 0.0f);
    EXPECT_EQ(out[2 * 8 * 64 + j], 0.0f);
  }
  const auto ck = from_gpu(d_ck);
  for (int64_t p = 0; p < 32; ++p) {
    for (int64_t j = 0; j < 128; ++j) {
      const uint16_t want = p == 9 ? float_to_bf16(k[128 + j]).bits : uint16_t{0};
      ASSERT_EQ(ck[p * 128 + j].bits, want) << p << " " << j;
    }
  }
}

}  // namespace
}  // namespace moe::kernels::test
