// Every CUDA backend op against the host reference backend on seeded random data. Tolerances
// follow the dtype path: exact for copies, fp32 rounding for elementwise ops and attention,
// per-element bf16 input bounds for linear, and an rms-scaled bound for the SwiGLU chains whose
// GEMM operands and (grouped) outputs are rounded to bf16 on the GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/common/check.h"
#include "tests/common/backend_calls.h"
#include "tests/common/wire_case.h"

namespace moe::kernels::test {
namespace {

TEST_F(CudaOpsTest, EmbeddingCopiesTableRowsExactly) {
  std::mt19937 rng(1);
  const int64_t vocab = 1000, hidden = 300;
  const auto table = random_bf16(rng, vocab * hidden);
  const std::vector<int32_t> ids = {0, 999, 17, 17, 512};
  std::vector<float> want(ids.size() * hidden);
  ref_->embedding(table.data(), vocab, hidden, ids.data(), 5, want.data());
  auto d_table = to_gpu(table);
  auto d_ids = to_gpu(ids);
  Buffer<float> d_out(*gpu_, want.size());
  // ids live in device memory; the model checks them against the vocabulary before the upload.
  gpu_->embedding(d_table.data(), vocab, hidden, d_ids.data(), 5, d_out.data());
  EXPECT_EQ(from_gpu(d_out), want);
}

TEST_F(CudaOpsTest, RmsNormMatchesCpuIncludingInPlace) {
  std::mt19937 rng(2);
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{7, 2048}, {300, 128}, {3, 37}}) {
    auto [x, w, want, d_x, d_w, d_y] = rmsnorm_case(rng, rows, dim);
    gpu_->rmsnorm(d_x.data(), d_w.data(), rows, dim, 1e-6f, d_y.data());
    EXPECT_TRUE(close_to(from_gpu(d_y), want, 1e-6, 1e-5)) << rows << "x" << dim;
    gpu_->rmsnorm(d_x.data(), d_w.data(), rows, dim, 1e-6f, d_x.data());  // y aliases x
    EXPECT_TRUE(close_to(from_gpu(d_x), want, 1e-6, 1e-5)) << rows << "x" << dim << " in place";
  }
}

// y = x W^T on the GPU and on the reference backend: {gpu, reference}.
std::pair<std::vector<float>, std::vector<float>> linear_both(Backend& gpu, Backend& ref,
                                                              const std::vector<float>& x,
                                                              const std::vector<bf16>& w,
                                                              int64_t rows, int64_t in,
                                                              int64_t out) {
  std::vector<float> want(rows * out);
  ref.linear(x.data(), w.data(), rows, in, out, want.data());
  auto d_x = upload_vector(gpu, x);
  auto d_w = upload_vector(gpu, w);
  Buffer<float> d_y(gpu, want.size());
  gpu.linear(d_x.data(), d_w.data(), rows, in, out, d_y.data());
  return {download_vector(gpu, d_y), want};
}

TEST_F(CudaOpsTest, LinearErrorStaysWithinBf16ActivationRounding) {
  std::mt19937 rng(3);
  for (auto [rows, in, out] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 2048, 512}, {37, 256, 1000}, {64, 96, 40}}) {
    const auto x = random_floats(rng, rows * in);
    const auto w = random_bf16(rng, out * in, 0.05f);
    const auto [got, want] = linear_both(*gpu_, *ref_, x, w, rows, in, out);
    EXPECT_TRUE(close_with(got, want, bf16_input_bound(x, w, rows, in, out), 0.0))
        << rows << "x" << in << "->" << out;
  }
}

TEST_F(CudaOpsTest, LinearOnBf16ExactInputsAgreesToFp32Accumulation) {
  // With x already bf16-representable the GPU rounds nothing: only summation order differs.
  std::mt19937 rng(4);
  const int64_t rows = 19, in = 512, out = 300;
  const auto x = rounded_to_bf16(random_floats(rng, rows * in));
  const auto w = random_bf16(rng, out * in, 0.05f);
  const auto [got, want] = linear_both(*gpu_, *ref_, x, w, rows, in, out);
  std::vector<double> bound = bf16_input_bound(x, w, rows, in, out);
  for (double& b : bound) b = b * 256.0 * 1e-5 + 1e-6;  // fp32 accumulation: ~1e-5 of sum |x w|
  EXPECT_TRUE(close_with(got, want, bound, 0.0));
}

struct AttnCase {
  std::vector<AttentionSeq> seqs;
  AttentionShape shape;
  int64_t slots;
  int64_t max_len;
};

// The GPU keeps its KV cache in bf16. q, k, v and the past cache entries are drawn bf16-exact, so
// the GPU's rounding on append is exact and both sides attend over the same keys and values: the
// outputs then differ only by fp32 summation order.
void run_attention_case(Backend& gpu, Backend& ref, const AttnCase& c, uint32_t seed) {
  ASSERT_EQ(gpu.kv_cache_dtype(), KvDtype::kBF16);
  std::mt19937 rng(seed);
  const int64_t H = c.shape.num_heads, KV = c.shape.num_kv_heads, D = c.shape.head_dim;
  int64_t T = 0;
  for (const auto& s : c.seqs) T = std::max(T, s.row_begin + s.num_new);
  const auto q = rounded_to_bf16(random_floats(rng, T * H * D, -2.0f, 2.0f));
  const auto k = rounded_to_bf16(random_floats(rng, T * KV * D, -2.0f, 2.0f));
  const auto v = rounded_to_bf16(random_floats(rng, T * KV * D, -2.0f, 2.0f));
  const int64_t W = KV * D;
  std::vector<float> ck(c.slots * c.max_len * W, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> cv(ck);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (const auto& s : c.seqs) {
    for (int64_t p = 0; p < s.past_len; ++p) {
      for (int64_t j = 0; j < W; ++j) {
        ck[(s.cache_slot * c.max_len + p) * W + j] = round_to_bf16(dist(rng));
        cv[(s.cache_slot * c.max_len + p) * W + j] = round_to_bf16(dist(rng));
      }
    }
  }
  std::vector<float> want(T * H * D, 0.0f), rk(ck), rv(cv);
  moe::test::attention(ref, q.data(), k.data(), v.data(), c.seqs.data(),
                       static_cast<int64_t>(c.seqs.size()), c.shape,
                       {rk.data(), rv.data(), c.slots, c.max_len}, want.data());

  auto d_q = upload_vector(gpu, q), d_k = upload_vector(gpu, k), d_v = upload_vector(gpu, v);
  auto d_ck = upload_vector(gpu, to_bf16(ck)), d_cv = upload_vector(gpu, to_bf16(cv));
  Buffer<float> d_out(gpu, want.size());
  gpu.fill_zero(d_out.data(), d_out.size_bytes());
  moe::test::attention(
      gpu, d_q.data(), d_k.data(), d_v.data(), c.seqs.data(), static_cast<int64_t>(c.seqs.size()),
      c.shape, {d_ck.data(), d_cv.data(), c.slots, c.max_len, KvDtype::kBF16}, d_out.data());
  EXPECT_TRUE(close_to(download_vector(gpu, d_out), want, 2e-5, 1e-4));
  const auto got_k = to_floats(download_vector(gpu, d_ck));
  const auto got_v = to_floats(download_vector(gpu, d_cv));
  for (size_t i = 0; i < rk.size(); ++i) {
    ASSERT_TRUE((std::isnan(rk[i]) && std::isnan(got_k[i])) || rk[i] == got_k[i]) << i;
    ASSERT_TRUE((std::isnan(rv[i]) && std::isnan(got_v[i])) || rv[i] == got_v[i]) << i;
  }
}

TEST_F(CudaOpsTest, KvAppendRoundsToNearestEvenBf16) {
  // One fresh token whose k/v are not bf16-exact: the cache must hold round-to-nearest-even bf16.
  const AttentionShape shape{2, 1, 64};
  std::mt19937 rng(21);
  const auto q = random_floats(rng, 2 * 64), k = random_floats(rng, 64), v = random_floats(rng, 64);
  auto d_q = to_gpu(q), d_k = to_gpu(k), d_v = to_gpu(v);
  Buffer<bf16> d_ck(*gpu_, 2 * 64), d_cv(*gpu_, 2 * 64);
  Buffer<float> d_out(*gpu_, 2 * 64);
  const AttentionSeq seq{0, 1, 1, 0};  // position 1: cache row 0 is left as it was
  gpu_->fill_zero(d_ck.data(), d_ck.size_bytes());
  gpu_->fill_zero(d_cv.data(), d_cv.size_bytes());
  moe::test::attention(*gpu_, d_q.data(), d_k.data(), d_v.data(), &seq, 1, shape,
                       {d_ck.data(), d_cv.data(), 1, 2, KvDtype::kBF16}, d_out.data());
  const auto ck = from_gpu(d_ck), cv = from_gpu(d_cv);
  for (int64_t j = 0; j < 64; ++j) {
    EXPECT_EQ(ck[j].bits, 0) << j;
    EXPECT_EQ(ck[64 + j].bits, float_to_bf16(k[j]).bits) << j;
    EXPECT_EQ(cv[64 + j].bits, float_to_bf16(v[j]).bits) << j;
  }
}

TEST_F(CudaOpsTest, AttentionPrefillBatchMatchesCpu) {
  // Fresh prompt, a prompt continuing its cache, a one-token step; GQA 4 query heads per kv head.
  run_attention_case(*gpu_, *ref_,
                     {{{8, 70, 0, 2}, {0, 5, 40, 0}, {5, 1, 12, 3}}, {8, 2, 64}, 4, 128}, 11);
}

TEST_F(CudaOpsTest, AttentionDecodeWithKeySplitsMatchesCpu) {
  // Qwen3-30B-A3B geometry; long caches and few blocks: the plan splits keys across blocks.
  run_attention_case(*gpu_, *ref_,
                     {{{0, 1, 1500, 0}, {1, 1, 33, 1}, {2, 3, 900, 2}}, {32, 4, 128}, 3, 1600}, 12);
}

TEST_F(CudaOpsTest, AttentionHeadDim256AndOddHeadDimMatchCpu) {
  run_attention_case(*gpu_, *ref_, {{{0, 20, 5, 0}, {20, 1, 300, 1}}, {4, 2, 256}, 2, 320}, 13);
  run_attention_case(*gpu_, *ref_, {{{0, 17, 3, 1}, {17, 1, 99, 0}}, {40, 2, 40}, 2, 128}, 14);
}

TEST_F(CudaOpsTest, RouterTopkMatchesCpu) {
  std::mt19937 rng(6);
  for (auto [rows, experts, k, renorm] :
       {std::tuple<int64_t, int64_t, int64_t, bool>{257, 128, 8, true},
        {33, 60, 4, false},
        {1, 256, 8, true},
        {5, 8, 8, false}}) {
    const auto logits = random_floats(rng, rows * experts, -4.0f, 4.0f);
    std::vector<int32_t> want_ids(rows * k);
    std::vector<float> want_w(rows * k);
    ref_->router_topk(logits.data(), rows, experts, k, renorm, want_ids.data(), want_w.data());
    auto d_logits = to_gpu(logits);
    Buffer<int32_t> d_ids(*gpu_, want_ids.size());
    Buffer<float> d_w(*gpu_, want_w.size());
    gpu_->router_topk(d_logits.data(), rows, experts, k, renorm, d_ids.data(), d_w.data());
    const auto got_ids = from_gpu(d_ids);
    const auto got_w = from_gpu(d_w);
    EXPECT_EQ(got_ids, want_ids) << rows << "x" << experts << " top-" << k;
    EXPECT_TRUE(close_to(got_w, want_w, 1e-7, 1e-5)) << rows << "x" << experts << " top-" << k;
  }
}

TEST_F(CudaOpsTest, RouterTieGoesToLowerExpertId) {
  std::vector<float> logits(64, 0.0f);
  logits[9] = logits[40] = logits[3] = 2.0f;
  auto d_logits = to_gpu(logits);
  Buffer<int32_t> d_ids(*gpu_, 2);
  Buffer<float> d_w(*gpu_, 2);
  gpu_->router_topk(d_logits.data(), 1, 64, 2, true, d_ids.data(), d_w.data());
  const auto ids = from_gpu(d_ids);
  const auto w = from_gpu(d_w);
  EXPECT_EQ(ids, (std::vector<int32_t>{3, 9}));
  EXPECT_FLOAT_EQ(w[0], 0.5f);
}

// A row with non-finite logits gets ids -1, which the dispatch layout reports as an error.
TEST_F(CudaOpsTest, RouterMarksRowsWithNonFiniteLogits) {
  std::vector<float> logits(2 * 16, 0.5f);
  logits[20] = std::numeric_limits<float>::quiet_NaN();
  auto d_logits = to_gpu(logits);
  Buffer<int32_t> d_ids(*gpu_, 4);
  Buffer<float> d_w(*gpu_, 4);
  gpu_->router_topk(d_logits.data(), 2, 16, 2, true, d_ids.data(), d_w.data());
  const auto ids = from_gpu(d_ids);
  EXPECT_GE(ids[0], 0);
  EXPECT_GE(ids[1], 0);
  EXPECT_EQ(ids[2], -1);
  EXPECT_EQ(ids[3], -1);
}

TEST_F(CudaOpsTest, SwigluMlpWithinBf16Tolerance) {
  std::mt19937 rng(7);
  const int64_t rows = 13, hidden = 256, inter = 384;
  const auto x = random_floats(rng, rows * hidden);
  const auto g = random_bf16(rng, inter * hidden, 0.1f), u = random_bf16(rng, inter * hidden, 0.1f);
  const auto d = random_bf16(rng, hidden * inter, 0.1f);
  std::vector<float> want(rows * hidden);
  ref_->swiglu_mlp(x.data(), {g.data(), u.data(), d.data()}, rows, hidden, inter, want.data());
  auto d_x = to_gpu(x), d_y = Buffer<float>(*gpu_, want.size());
  auto d_g = to_gpu(g), d_u = to_gpu(u), d_d = to_gpu(d);
  gpu_->swiglu_mlp(d_x.data(), {d_g.data(), d_u.data(), d_d.data()}, rows, hidden, inter,
                   d_y.data());
  EXPECT_TRUE(close_to(from_gpu(d_y), want, 2e-2 * rms(want), 1e-2));
}

struct Experts {
  std::vector<std::vector<bf16>> gate, up, down;
};

// Grouped experts on GPU vs the reference, with `counts` entries per expert laid out in a
// shuffled group order; `uncovered` entries of capacity past the groups must keep their value.
void run_grouped_case(Backend& gpu, Backend& ref, int64_t hidden, int64_t inter,
                      const std::vector<int64_t>& counts, int64_t uncovered, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t E = static_cast<int64_t>(counts.size());
  const int64_t P = std::accumulate(counts.begin(), counts.end(), int64_t{0}) + uncovered;
  const int64_t R = std::max<int64_t>(1, P / 2 + 3);
  const auto x = random_floats(rng, R * hidden);
  std::vector<int32_t> row_index(P);
  for (auto& r : row_index) r = std::uniform_int_distribution<int32_t>(0, R - 1)(rng);

  Experts host;
  std::vector<Buffer<bf16>> dev;
  std::vector<ExpertWeights> host_w(E), dev_w(E);
  for (int64_t e = 0; e < E; ++e) {
    host.gate.push_back(random_bf16(rng, inter * hidden, 0.1f));
    host.up.push_back(random_bf16(rng, inter * hidden, 0.1f));
    host.down.push_back(random_bf16(rng, hidden * inter, 0.1f));
    host_w[e] = {host.gate[e].data(), host.up[e].data(), host.down[e].data()};
    dev.push_back(upload_vector(gpu, host.gate[e]));
    dev.push_back(upload_vector(gpu, host.up[e]));
    dev.push_back(upload_vector(gpu, host.down[e]));
    dev_w[e] = {dev[3 * e].data(), dev[3 * e + 1].data(), dev[3 * e + 2].data()};
  }
  // Experts in a shuffled order; entries [P - uncovered, P) belong to nobody.
  std::vector<int64_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<ExpertGroup> host_groups, dev_groups;
  int64_t at = 0;
  for (int64_t e : order) {
    host_groups.push_back({host_w[e], at, counts[e]});
    dev_groups.push_back({dev_w[e], at, counts[e]});
    at += counts[e];
  }
  std::vector<float> want(P * hidden, 123.0f);
  moe::test::grouped_swiglu(ref, x.data(), hidden, inter, host_groups.data(), E, row_index.data(),
                            want.data());
  auto d_x = upload_vector(gpu, x);
  auto d_out = upload_vector(gpu, std::vector<float>(P * hidden, 123.0f));
  moe::test::grouped_swiglu(gpu, d_x.data(), hidden, inter, dev_groups.data(), E, row_index.data(),
                            d_out.data());
  const auto got = download_vector(gpu, d_out);
  for (int64_t i = (P - uncovered) * hidden; i < P * hidden; ++i) ASSERT_EQ(got[i], 123.0f) << i;
  EXPECT_TRUE(close_to(got, want, 3e-2 * rms(want), 1e-2));
}

TEST_F(CudaOpsTest, GroupedExpertSwigluMatchesPerEntryReference) {
  run_grouped_case(*gpu_, *ref_, 256, 128, {0, 5, 1, 17, 0, 40}, 3, 21);
}

TEST_F(CudaOpsTest, GroupedExpertSwigluOddWidthsUsePaddedLayout) {
  run_grouped_case(*gpu_, *ref_, 100, 36, {3, 1, 4, 1, 5}, 0, 22);
}

TEST_F(CudaOpsTest, GroupedExpertSwigluManyExpertsOneCallPerProjection) {
  std::mt19937 rng(23);
  std::vector<int64_t> counts(128);
  for (auto& c : counts) c = std::uniform_int_distribution<int64_t>(0, 12)(rng);
  run_grouped_case(*gpu_, *ref_, 128, 64, counts, 0, 24);
}

TEST_F(CudaOpsTest, GroupedExpertSwigluWithOnlyEmptyGroupsWritesNothing) {
  const std::vector<ExpertGroup> groups = {{ExpertWeights{}, 0, 0}};
  auto d_out = to_gpu(std::vector<float>(8, 5.0f));
  moe::test::grouped_swiglu(*gpu_, nullptr, 8, 8, groups.data(), 1, nullptr, d_out.data());
  EXPECT_EQ(from_gpu(d_out), std::vector<float>(8, 5.0f));
}

TEST_F(CudaOpsTest, AddInplaceAndGatherRowsAreExact) {
  std::mt19937 rng(8);
  const auto x = random_floats(rng, 1000), y = random_floats(rng, 1000);
  std::vector<float> want(x);
  ref_->add_inplace(want.data(), y.data(), 1000);
  auto d_x = to_gpu(x), d_y = to_gpu(y);
  gpu_->add_inplace(d_x.data(), d_y.data(), 1000);
  EXPECT_EQ(from_gpu(d_x), want);

  const std::vector<int32_t> idx = {9, 0, 0, 4, 7};
  std::vector<float> rows_want(5 * 100);
  ref_->gather_rows(x.data(), 100, idx.data(), 5, rows_want.data());
  auto d_src = to_gpu(x);
  Buffer<float> d_rows(*gpu_, rows_want.size());
  moe::test::gather_rows(*gpu_, d_src.data(), 100, idx.data(), 5, d_rows.data());
  EXPECT_EQ(from_gpu(d_rows), rows_want);
}

// The combine ops (the layout bodies of kernels/common/moe_layout.h, one CUDA thread per column)
// against the host backend's (the same bodies over whole rows), in fp32 and bf16 rows: partial
// sums per received row of other ranks in route order; then each token's rows (returned ones,
// and own ones summed in place) added to the residual.
TEST_F(CudaOpsTest, CombineOpsMatchTheHostBackend) {
  std::mt19937 rng(9);
  const int64_t width = 77;
  const int32_t k = 3, rows = 11, own_begin = 4, own_rows = 3;
  std::vector<RouteEntry> routes(rows * k);
  std::vector<int32_t> pair_of_entry(rows * k, -1);
  int32_t pairs = 0;
  for (int32_t i = 0; i < rows * k; ++i) {
    if (i % k != 0 && rng() % 3 == 0) continue;  // every row keeps its first entry
    routes[i] = RouteEntry{0, random_floats(rng, 1, 0.0f, 1.0f)[0]};
    pair_of_entry[i] = pairs++;
  }
  const auto expert_out = random_floats(rng, pairs * width);
  auto d_routes = to_gpu(routes);
  auto d_pairs = to_gpu(pair_of_entry);
  auto d_out = to_gpu(expert_out);
  // 6 tokens over 9 sent rows, rows 2..4 kept on this rank (received rows own_begin..).
  const int32_t tokens = 6, send_rows = 9, own_send_begin = 2;
  const std::vector<int32_t> token_offsets = {0, 2, 3, 5, 6, 8, 9};
  const std::vector<int32_t> token_rows = {0, 5, 2, 1, 6, 3, 4, 7, 8};
  const auto x = random_floats(rng, tokens * width);
  for (WireDtype dtype : {WireDtype::kF32, WireDtype::kBF16}) {
    SCOPED_TRACE(wire_dtype_name(dtype));
    const int64_t row_bytes = wire::row_bytes(dtype, width);
    std::vector<unsigned char> want_partial((rows - own_rows) * row_bytes);
    layout::PartialRowsView v{
        routes.data(), pair_of_entry.data(), expert_out.data(), width, k, rows, own_begin, own_rows,
        dtype,         want_partial.data()};
    ref_->combine_partial(v);
    Buffer<unsigned char> d_partial(*gpu_, want_partial.size());
    v.routes = d_routes.data();
    v.pair_of_entry = d_pairs.data();
    v.expert_out = d_out.data();
    v.out = d_partial.data();
    gpu_->combine_partial(v);
    EXPECT_EQ(from_gpu(d_partial), want_partial);  // the same fp32 operations, the same bits

    std::vector<unsigned char> returned((send_rows - own_rows) * row_bytes);
    const auto values = random_floats(rng, (send_rows - own_rows) * width);
    for (int32_t q = 0; q < send_rows - own_rows; ++q) {
      wire::encode_columns(dtype, values.data() + q * width, returned.data() + q * row_bytes, 0,
                           width);
    }
    layout::CombineSources src{.returned = returned.data(),
                               .dtype = dtype,
                               .own_send_begin = own_send_begin,
                               .own_rows = own_rows,
                               .own_recv_begin = own_begin,
                               .routes = routes.data(),
                               .pair_of_entry = pair_of_entry.data(),
                               .expert_out = expert_out.data(),
                               .top_k = k};
    std::vector<float> want_x(x);
    ref_->combine_residual(src, token_offsets.data(), token_rows.data(), width, tokens,
                           want_x.data());
    auto d_returned = to_gpu(returned);
    auto d_x = to_gpu(x);
    auto d_offsets = to_gpu(token_offsets), d_token_rows = to_gpu(token_rows);
    src.returned = d_returned.data();
    src.routes = d_routes.data();
    src.pair_of_entry = d_pairs.data();
    src.expert_out = d_out.data();
    gpu_->combine_residual(src, d_offsets.data(), d_token_rows.data(), width, tokens, d_x.data());
    EXPECT_EQ(from_gpu(d_x), want_x);
  }
}

// pack_rows and receive_rows (kernels/common/moe_wire.h, one thread per column or fp8 block)
// write the same bytes as the host backend's loops over the same bodies, spills included.
TEST_F(CudaOpsTest, WirePackAndReceiveMatchTheHostBackend) {
  for (WireDtype dtype : {WireDtype::kF32, WireDtype::kBF16, WireDtype::kFP8}) {
    SCOPED_TRACE(wire_dtype_name(dtype));
    moe::test::WireCase c = moe::test::make_wire_case(3, 1, {3, 2, 4}, 200, 3, 2, dtype);
    c.bf16_copy = dtype == WireDtype::kBF16;  // bf16 rows copied from the rows' bf16 copy
    const std::vector<unsigned char> host = moe::test::pack_on(*ref_, c);
    EXPECT_EQ(moe::test::pack_on(*gpu_, c), host);
    const moe::test::Received want = moe::test::receive_on(*ref_, c, host);
    const moe::test::Received got = moe::test::receive_on(*gpu_, c, host);
    EXPECT_EQ(got.row_at, want.row_at);
    EXPECT_EQ(got.rows, want.rows);
    ASSERT_EQ(got.routes.size(), want.routes.size());
    for (size_t i = 0; i < got.routes.size(); ++i) {
      EXPECT_TRUE(got.routes[i].local_slot == want.routes[i].local_slot &&
                  got.routes[i].weight == want.routes[i].weight)
          << "entry " << i;
    }
  }
}

}  // namespace
}  // namespace moe::kernels::test
