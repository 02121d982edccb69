// The CPU bf16 mode and the GPU's numerics on the reference ops (Bf16ReferenceBackend over
// tests/gpu's ReferenceBackend, both following kernels/common/rounding.h) round at the same
// points. Inputs are built so every sum is exact in fp32 whatever the order: then the only thing
// that can tell two implementations apart is where they round, and bit-equality is required.
// Each test also flips one rounding point in the reference and checks that this is seen, so the
// inputs really exercise every point.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "bf16_reference_backend.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/common/backend_calls.h"

namespace moe::kernels::test {
namespace {

// k / 64 for k in [64, 256) (a bf16 value in [1, 4)), moved by up to 0.4 bf16 ulp so that
// rounding x is visible yet lands back on k / 64.
std::vector<float> exact_activations(std::mt19937& rng, int64_t n, bool allow_negative) {
  std::uniform_int_distribution<int> k(64, 255), sign(0, 1);
  std::uniform_real_distribution<float> frac(-0.4f, 0.4f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) {
    const int kk = k(rng);
    const float ulp = kk < 128 ? 1.0f / 128 : 1.0f / 64;
    v = (static_cast<float>(kk) + frac(rng) * ulp * 64) / 64.0f;
    if (allow_negative && sign(rng)) v = -v;
  }
  return x;
}

// Small integers in [lo, hi]: exact bf16 weights.
std::vector<bf16> int_weights(std::mt19937& rng, int64_t n, int lo, int hi) {
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<bf16> w(static_cast<size_t>(n));
  for (bf16& v : w) v = float_to_bf16(static_cast<float>(d(rng)));
  return w;
}

std::vector<std::unique_ptr<Backend>> cpu_bf16_backends() {
  std::vector<std::unique_ptr<Backend>> v;
  v.push_back(make_cpu_backend(ComputeDtype::kBF16));
  v.push_back(make_cpu_bf16_fallback_backend());
  return v;
}

TEST(RoundingPoints, LinearRoundsItsInputOnly) {
  std::mt19937 rng(21);
  const int64_t rows = 9, in = 64, out = 40;
  const auto x = exact_activations(rng, rows * in, true);
  const auto w = int_weights(rng, out * in, -3, 3);
  std::vector<float> want(rows * out), got(rows * out);
  Bf16ReferenceBackend().linear(x.data(), w.data(), rows, in, out, want.data());
  for (auto& be : cpu_bf16_backends()) {
    be->linear(x.data(), w.data(), rows, in, out, got.data());
    EXPECT_EQ(got, want);
  }
  RoundingPoints no_input;
  no_input.linear_input = false;
  std::vector<float> mutant(rows * out);
  Bf16ReferenceBackend(no_input).linear(x.data(), w.data(), rows, in, out, mutant.data());
  EXPECT_NE(mutant, want);
}

struct SwigluInputs {
  int64_t rows = 6, hidden = 64, inter = 32;
  std::vector<float> x;
  std::vector<bf16> gate, up, down;
  std::vector<int32_t> row_index;
  explicit SwigluInputs(std::mt19937& rng) {
    // x > 0 and gate/up weights >= 1 keep gate and up >= 64: silu(g) == g exactly in fp32, and
    // every bf16 activation is a multiple of 2^5 below 2^20, so the down sums are exact too.
    x = exact_activations(rng, rows * hidden, false);
    gate = int_weights(rng, inter * hidden, 1, 3);
    up = int_weights(rng, inter * hidden, 1, 3);
    down = int_weights(rng, hidden * inter, -3, 3);
    for (int64_t r = rows - 1; r >= 0; --r) row_index.push_back(static_cast<int32_t>(r));
    for (int64_t r = 0; r < rows; r += 2) row_index.push_back(static_cast<int32_t>(r));
  }
  ExpertWeights w() const { return {gate.data(), up.data(), down.data()}; }
  std::vector<float> dense(Backend& be) const {
    std::vector<float> y(rows * hidden);
    be.swiglu_mlp(x.data(), w(), rows, hidden, inter, y.data());
    return y;
  }
  std::vector<float> grouped(Backend& be) const {
    // Two groups over the same expert weights (swapped gate/up in the second).
    const ExpertWeights w2{up.data(), gate.data(), down.data()};
    const int64_t n1 = rows, n2 = static_cast<int64_t>(row_index.size()) - rows;
    const ExpertGroup groups[2] = {{w(), 0, n1}, {w2, n1, n2}};
    std::vector<float> out(row_index.size() * hidden);
    moe::test::grouped_swiglu(be, x.data(), hidden, inter, groups, 2, row_index.data(), out.data());
    return out;
  }
};

TEST(RoundingPoints, DenseSwigluRoundsInputAndActivation) {
  std::mt19937 rng(22);
  const SwigluInputs in(rng);
  Bf16ReferenceBackend ref;
  const auto want = in.dense(ref);
  for (auto& be : cpu_bf16_backends()) EXPECT_EQ(in.dense(*be), want) << be->name();
  for (int flip = 0; flip < 4; ++flip) {
    RoundingPoints p;
    bool* stage[4] = {&p.dense.input, &p.dense.gate_up, &p.dense.activation, &p.dense.output};
    *stage[flip] = !*stage[flip];
    Bf16ReferenceBackend mutant(p);
    EXPECT_NE(in.dense(mutant), want) << "flipping dense stage " << flip << " went unseen";
  }
}

TEST(RoundingPoints, GroupedSwigluRoundsEveryStage) {
  std::mt19937 rng(23);
  const SwigluInputs in(rng);
  Bf16ReferenceBackend ref;
  const auto want = in.grouped(ref);
  for (auto& be : cpu_bf16_backends()) EXPECT_EQ(in.grouped(*be), want) << be->name();
  for (int flip = 0; flip < 4; ++flip) {
    RoundingPoints p;
    bool* stage[4] = {&p.grouped.input, &p.grouped.gate_up, &p.grouped.activation,
                      &p.grouped.output};
    *stage[flip] = !*stage[flip];
    Bf16ReferenceBackend mutant(p);
    EXPECT_NE(in.grouped(mutant), want) << "flipping grouped stage " << flip << " went unseen";
  }
}

TEST(RoundingPoints, KvCacheHoldsRoundedKeysAndValuesOnBoth) {
  std::mt19937 rng(24);
  const AttentionShape shape{2, 1, 8};
  const int64_t T = 5, max_len = 8, kvw = shape.head_dim;
  const auto q = exact_activations(rng, T * 2 * 8, true);
  const auto k = exact_activations(rng, T * kvw, true);
  const auto v = exact_activations(rng, T * kvw, true);
  const AttentionSeq seq{0, T, 0, 0};
  auto caches = [&](Backend& be) {
    std::vector<float> kc(max_len * kvw, 0.0f), vc(max_len * kvw, 0.0f), out(q.size());
    moe::test::attention(be, q.data(), k.data(), v.data(), &seq, 1, shape,
                         KvCacheView{kc.data(), vc.data(), 1, max_len, KvDtype::kF32}, out.data());
    kc.insert(kc.end(), vc.begin(), vc.end());
    return kc;
  };
  Bf16ReferenceBackend ref;
  const auto want = caches(ref);
  for (auto& be : cpu_bf16_backends()) EXPECT_EQ(caches(*be), want);
  RoundingPoints p;
  p.kv_cache_append = false;
  Bf16ReferenceBackend mutant(p);
  EXPECT_NE(caches(mutant), want);
}

}  // namespace
}  // namespace moe::kernels::test
