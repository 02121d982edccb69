// TraceRecorder: rows are kept per layer in the order this rank routed them, with their
// (step, sequence, position) key; gather sends keys once (every MoE layer of a step sees the
// same tokens) and ids/weights per layer, and rank 0 sorts by key.
#include "runtime/model/trace_recorder.h"

#include <algorithm>
#include <numeric>
#include <tuple>

#include "kernels/common/check.h"

namespace moe::runtime {
namespace {

// Gathers every rank's `local` on rank 0, rank after rank (counts in elements).
template <class T>
std::vector<T> gather_to_root(parallel::Communicator& comm, const std::vector<T>& local) {
  const int64_t mine = static_cast<int64_t>(local.size());
  std::vector<int64_t> counts(static_cast<size_t>(comm.size()));
  comm.all_gather<int64_t>(std::span<const int64_t>(&mine, 1), counts);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  std::vector<T> all(comm.rank() == 0 ? static_cast<size_t>(total) : 0);
  comm.gather_v<T>(local, all, counts, 0);
  return all;
}

}  // namespace

TraceRecorder::TraceRecorder(const ModelConfig& config)
    : num_experts_(config.num_experts),
      top_k_(config.num_experts_per_tok),
      num_layers_(config.num_hidden_layers),
      slot_of_layer_(static_cast<size_t>(config.num_hidden_layers), -1) {
  for (int64_t l = 0; l < num_layers_; ++l) {
    if (!config.layer_is_moe(l)) continue;
    slot_of_layer_[static_cast<size_t>(l)] = static_cast<int64_t>(moe_layers_.size());
    moe_layers_.push_back(l);
  }
  records_.resize(moe_layers_.size());
}

void TraceRecorder::route(int64_t step, int layer, std::span<const TokenId> tokens,
                          std::span<int32_t> ids, std::span<float> weights) {
  const int64_t slot = slot_of_layer_.at(static_cast<size_t>(layer));
  MOE_CHECK(slot >= 0, "trace recorder: layer {} is not a MoE layer", layer);
  LayerRecord& r = records_[static_cast<size_t>(slot)];
  for (const TokenId& t : tokens) r.keys.insert(r.keys.end(), {step, t.sequence, t.position});
  r.ids.insert(r.ids.end(), ids.begin(), ids.end());
  r.weights.insert(r.weights.end(), weights.begin(), weights.end());
}

RoutingTrace TraceRecorder::gather(parallel::Communicator& comm) const {
  RoutingTrace t;
  if (records_.empty()) return t;
  const std::vector<int64_t>& keys = records_[0].keys;
  for (const LayerRecord& r : records_) {
    MOE_CHECK(r.keys == keys, "trace recorder: MoE layers saw different tokens on rank {}",
              comm.rank());
  }
  const std::vector<int64_t> all_keys = gather_to_root(comm, keys);
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::vector<float>> weights;
  for (const LayerRecord& r : records_) {
    ids.push_back(gather_to_root(comm, r.ids));
    weights.push_back(gather_to_root(comm, r.weights));
  }
  if (comm.rank() != 0) return t;

  const int64_t rows = static_cast<int64_t>(all_keys.size()) / 3;
  std::vector<int64_t> order(static_cast<size_t>(rows));
  std::iota(order.begin(), order.end(), int64_t{0});
  const auto key = [&](int64_t r) {
    return std::tie(all_keys[r * 3], all_keys[r * 3 + 1], all_keys[r * 3 + 2]);
  };
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
  t.num_experts = num_experts_;
  t.top_k = top_k_;
  t.num_layers = num_layers_;
  t.layers = moe_layers_;
  const size_t k = static_cast<size_t>(top_k_);
  for (size_t i = 0; i < records_.size(); ++i) {
    std::vector<int32_t> sorted_ids(ids[i].size());
    std::vector<float> sorted_weights(weights[i].size());
    for (int64_t r = 0; r < rows; ++r) {
      const size_t from = static_cast<size_t>(order[static_cast<size_t>(r)]) * k;
      std::copy_n(ids[i].begin() + from, k, sorted_ids.begin() + r * k);
      std::copy_n(weights[i].begin() + from, k, sorted_weights.begin() + r * k);
    }
    t.ids.push_back(std::move(sorted_ids));
    t.weights.push_back(std::move(sorted_weights));
  }
  return t;
}

}  // namespace moe::runtime
