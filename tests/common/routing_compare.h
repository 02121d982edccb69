// Whole-model logits against a reference when the two runs may route some tokens differently
// (bf16 vs fp32, GPU vs CPU): a routing flip changes a token's hidden state by far more than the
// rounding that caused it, so errors are measured only where routing agrees, and the flipped
// share and top-1 agreement are reported beside it. RoutingRecorder, a routing hook, keeps the
// routing a run chose.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/model/routing.h"

namespace moe::test {

// Top-k expert ids of every position in every MoE layer: layers[l][position * top_k + j].
struct Routing {
  int64_t top_k = 0;
  std::vector<std::vector<int32_t>> layers;

  int64_t num_positions() const {
    return layers.empty() || top_k == 0 ? 0 : static_cast<int64_t>(layers[0].size()) / top_k;
  }
  // The same set of experts (order aside) in every layer at this position.
  bool agrees_at(const Routing& other, int64_t pos) const {
    if (layers.size() != other.layers.size() || top_k != other.top_k) return false;
    for (size_t l = 0; l < layers.size(); ++l) {
      std::vector<int32_t> a(layers[l].begin() + pos * top_k,
                             layers[l].begin() + (pos + 1) * top_k);
      std::vector<int32_t> b(other.layers[l].begin() + pos * top_k,
                             other.layers[l].begin() + (pos + 1) * top_k);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      if (a != b) return false;
    }
    return true;
  }
};

struct RoutingComparison {
  int64_t positions = 0;
  int64_t agreeing = 0;   // positions whose routing agrees with the reference in every layer
  int64_t top1_same = 0;  // positions whose argmax agrees with the reference's
  // Max over agreeing positions of max_v |got - want| / max_v |want| (per position row).
  double max_rel_diff_agreeing = 0;

  double flipped_share() const {
    return positions == 0 ? 0.0 : 1.0 - static_cast<double>(agreeing) / positions;
  }
  double top1_agreement() const {
    return positions == 0 ? 1.0 : static_cast<double>(top1_same) / positions;
  }
  RoutingComparison& operator+=(const RoutingComparison& o) {
    positions += o.positions;
    agreeing += o.agreeing;
    top1_same += o.top1_same;
    max_rel_diff_agreeing = std::max(max_rel_diff_agreeing, o.max_rel_diff_agreeing);
    return *this;
  }
  std::string summary() const {
    std::ostringstream s;
    s << positions << " positions: routing flipped at " << (positions - agreeing) << " ("
      << 100.0 * flipped_share() << "%), max rel diff on agreeing positions "
      << max_rel_diff_agreeing << ", top-1 agreement " << 100.0 * top1_agreement() << "%";
    return s.str();
  }
};

// got and want are [positions, vocab]; routings cover the same positions in the same order.
inline RoutingComparison compare_with_routing(const float* got, const float* want,
                                              int64_t positions, int64_t vocab,
                                              const Routing& got_routing,
                                              const Routing& want_routing) {
  RoutingComparison c;
  c.positions = positions;
  for (int64_t p = 0; p < positions; ++p) {
    const float* g = got + p * vocab;
    const float* w = want + p * vocab;
    if (std::max_element(g, g + vocab) - g == std::max_element(w, w + vocab) - w) ++c.top1_same;
    if (!got_routing.agrees_at(want_routing, p)) continue;
    ++c.agreeing;
    double diff = 0, ref = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      diff = std::max(diff, std::fabs(static_cast<double>(g[v]) - w[v]));
      ref = std::max(ref, std::fabs(static_cast<double>(w[v])));
    }
    c.max_rel_diff_agreeing = std::max(c.max_rel_diff_agreeing, ref > 0 ? diff / ref : diff);
  }
  return c;
}

// A routing hook that keeps every MoE layer's top-k ids as the model routed them: one Routing
// layer per call, so a model step over T tokens adds its MoE layers in order, each [T, top_k].
class RoutingRecorder final : public runtime::RoutingHook {
 public:
  const Routing& routing() const { return routing_; }
  void route(int64_t /*step*/, int /*layer*/, std::span<const runtime::TokenId> tokens,
             std::span<int32_t> ids, std::span<float> /*weights*/) override {
    routing_.top_k =
        tokens.empty() ? routing_.top_k : static_cast<int64_t>(ids.size() / tokens.size());
    routing_.layers.emplace_back(ids.begin(), ids.end());
  }

 private:
  Routing routing_;
};

}  // namespace moe::test
