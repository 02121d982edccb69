// Shared by the parallel tests: seeded experts, routings and hidden rows, one expert-parallel MoE
// layer (dispatch -> grouped SwiGLU on this rank's slots -> combine) and its single-process
// reference y[t] = sum_k w[t,k] * expert_{id[t,k]}(x[t]). Every value is a pure function of
// (seed, expert id) or (seed, rank, token), so ranks agree without talking.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/bf16.h"
#include "parallel/dispatcher.h"
#include "parallel/load_stats.h"
#include "parallel/placement.h"

namespace moe::parallel::testing {

inline uint64_t mix_seed(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9e3779b97f4a7c15ull + b + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [-scale, scale), generated without <random> distributions (portable values).
inline std::vector<float> random_floats(uint64_t seed, size_t n, float scale) {
  std::mt19937_64 gen(seed);
  std::vector<float> v(n);
  for (auto& x : v) {
    const double u = static_cast<double>(gen() >> 11) * 0x1.0p-53;  // [0, 1)
    x = static_cast<float>((2.0 * u - 1.0) * scale);
  }
  return v;
}

struct TestExpert {
  std::vector<bf16> gate, up;  // [I, H]
  std::vector<bf16> down;      // [H, I]
  kernels::ExpertWeights view() const { return {gate.data(), up.data(), down.data()}; }
};

// Expert e's weights depend only on (seed, e): any rank can build any expert.
inline TestExpert make_expert(uint64_t seed, int expert, int64_t hidden, int64_t inter) {
  auto to_bf16 = [](const std::vector<float>& f) {
    std::vector<bf16> b(f.size());
    for (size_t i = 0; i < f.size(); ++i) b[i] = float_to_bf16(f[i]);
    return b;
  };
  const uint64_t s = mix_seed(seed, 1000003ull + static_cast<uint64_t>(expert));
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(hidden));
  const float out_scale = 1.0f / std::sqrt(static_cast<float>(inter));
  TestExpert x;
  x.gate = to_bf16(random_floats(mix_seed(s, 1), static_cast<size_t>(inter * hidden), in_scale));
  x.up = to_bf16(random_floats(mix_seed(s, 2), static_cast<size_t>(inter * hidden), in_scale));
  x.down = to_bf16(random_floats(mix_seed(s, 3), static_cast<size_t>(hidden * inter), out_scale));
  return x;
}

struct Routing {
  std::vector<int32_t> ids;    // [T, k] distinct per token
  std::vector<float> weights;  // [T, k] positive, sum 1 per token
};

// k distinct experts per token from `allowed`, weights positive and normalised.
inline Routing make_routing(uint64_t seed, int64_t num_tokens, int top_k,
                            const std::vector<int>& allowed) {
  std::mt19937_64 gen(seed);
  Routing r;
  r.ids.resize(static_cast<size_t>(num_tokens * top_k));
  r.weights.resize(r.ids.size());
  std::vector<int> pool = allowed;
  for (int64_t t = 0; t < num_tokens; ++t) {
    // Partial Fisher-Yates: the first k of the pool are this token's experts.
    for (int j = 0; j < top_k; ++j) {
      const size_t pick = j + static_cast<size_t>(gen() % (pool.size() - j));
      std::swap(pool[j], pool[pick]);
      r.ids[t * top_k + j] = pool[j];
    }
    float total = 0;
    for (int j = 0; j < top_k; ++j) {
      const float w = 0.05f + static_cast<float>(gen() % 1000) / 1000.0f;
      r.weights[t * top_k + j] = w;
      total += w;
    }
    for (int j = 0; j < top_k; ++j) r.weights[t * top_k + j] /= total;
  }
  return r;
}

// Caches experts by id so a test builds each at most once per process.
class ExpertBank {
 public:
  ExpertBank(uint64_t seed, int64_t hidden, int64_t inter)
      : seed_(seed), hidden_(hidden), inter_(inter) {}
  const TestExpert& get(int e) {
    auto it = experts_.find(e);
    if (it == experts_.end())
      it = experts_.emplace(e, make_expert(seed_, e, hidden_, inter_)).first;
    return it->second;
  }
  int64_t hidden() const { return hidden_; }
  int64_t inter() const { return inter_; }

 private:
  uint64_t seed_;
  int64_t hidden_, inter_;
  std::map<int, TestExpert> experts_;
};

// A one-layer placement from per-rank expert lists (an expert on several ranks is replicated).
inline Placement one_layer(const std::vector<std::vector<int>>& lists, int num_experts) {
  PlacementSpec spec;
  spec.strategy = "explicit";
  spec.default_layer = lists;
  return Placement::build(spec, {true}, num_experts, static_cast<int>(lists.size()));
}

// What one MoE layer on this rank gave: y [T, H], the dispatcher's counters for it, and the
// sizes of what this rank received and computed.
struct LayerRun {
  std::vector<float> y;
  LayerLoad load;
  int64_t num_recv_rows = 0;
  int64_t num_pairs = 0;
};

// One expert-parallel MoE layer on this rank, the way the model runs it: dispatch -> grouped
// SwiGLU over this rank's slots -> combine (added to y = 0). The dispatcher must have
// `placement` (a one-layer placement) set. Host backend only. `inspect` (optional) sees the
// handle and the expert outputs before the combine.
inline LayerRun run_moe_layer(
    Dispatcher& dispatcher, kernels::Backend& backend, const Placement& placement, int rank,
    ExpertBank& bank, const std::vector<float>& x, int64_t num_tokens, const Routing& routing,
    const std::function<void(const DispatchHandle&, std::vector<float>&)>& inspect = {}) {
  const int64_t H = bank.hidden();
  dispatcher.begin_step();
  const DispatchHandle d =
      dispatcher.dispatch(0, x.data(), num_tokens, routing.ids.data(), routing.weights.data());
  std::vector<kernels::ExpertWeights> slots;
  for (int e : placement.layer(0).rank_experts[rank]) slots.push_back(bank.get(e).view());
  kernels::ExpertBatch batch = d.experts;
  batch.slot_weights = slots.data();
  batch.host_slot_weights = slots.data();
  std::vector<float> out(static_cast<size_t>(std::max<int64_t>(batch.max_pairs, 1) * H));
  if (batch.max_pairs > 0) {
    backend.expert_swiglu(d.recv_rows, H, bank.inter(), batch, out.data(), d.recv_rows_bf16);
  }
  if (inspect) inspect(d, out);
  LayerRun run;
  run.y.assign(static_cast<size_t>(num_tokens * H), 0.0f);
  dispatcher.combine(out.data(), d, run.y.data());
  run.load = dispatcher.collect_loads().at(0);
  run.num_recv_rows = d.num_recv_rows;
  run.num_pairs = d.experts.num_slots > 0 ? d.experts.slot_begin[d.experts.num_slots] : 0;
  return run;
}

// Single-process reference: y[t] = sum_k w[t,k] * expert(x[t]), fp32 in k order.
inline std::vector<float> reference_moe_layer(kernels::Backend& backend, ExpertBank& bank,
                                              const std::vector<float>& x, int64_t num_tokens,
                                              int top_k, const Routing& routing) {
  const int64_t H = bank.hidden();
  std::vector<float> y(static_cast<size_t>(num_tokens * H), 0.0f);
  std::vector<float> out(static_cast<size_t>(H));
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int j = 0; j < top_k; ++j) {
      const TestExpert& e = bank.get(routing.ids[t * top_k + j]);
      backend.swiglu_mlp(x.data() + t * H, e.view(), 1, H, bank.inter(), out.data());
      const float w = routing.weights[t * top_k + j];
      for (int64_t c = 0; c < H; ++c) y[t * H + c] += w * out[c];
    }
  }
  return y;
}

// max |a - b| / max |b| (0 when both are empty or zero; infinite on NaN/Inf or a size mismatch).
inline double relative_max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    ref = std::max(ref, static_cast<double>(std::fabs(b[i])));
  }
  if (a.size() != b.size()) return INFINITY;
  return ref > 0 ? diff / ref : diff;
}

}  // namespace moe::parallel::testing
