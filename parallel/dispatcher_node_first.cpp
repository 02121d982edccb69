// Dispatcher (dispatcher.h): where rows go — the routing tables a placement gives (flat, or the
// node-first exchange's two levels: routing_tables.h) — and the node-first exchange's second
// level: the rows a node received handed to its ranks, and the loads of both levels as one.
#include <algorithm>

#include "kernels/common/check.h"
#include "parallel/dispatcher.h"
#include "parallel/routing_tables.h"

namespace moe::parallel {

namespace layout = kernels::layout;

void Dispatcher::set_placement(const Placement& placement) {
  const int N = comm_.size();
  MOE_CHECK_AS("dispatch", placement.num_ranks() == N,
               "dispatch: placement is for {} ranks but the job has {}", placement.num_ranks(), N);
  const NodeLayout& nodes = comm_.node_layout();
  std::vector<RoutingArrays> layers(static_cast<size_t>(placement.num_layers()));
  std::vector<RoutingArrays> in_node(inner_ != nullptr ? layers.size() : 0);
  for (int l = 0; l < placement.num_layers(); ++l) {
    const LayerPlacement& lp = placement.layer(l);
    if (lp.num_experts() == 0) continue;  // dense layer
    MOE_CHECK_AS("dispatch", lp.num_experts() == placement.num_experts(),
                 "layer {} places {} experts, the model has {}", l, lp.num_experts(),
                 placement.num_experts());
    if (inner_ == nullptr) {
      layers[static_cast<size_t>(l)] = flat_routing(lp);
    } else {
      layers[static_cast<size_t>(l)] = proxy_routing(lp, nodes);
      in_node[static_cast<size_t>(l)] = flat_routing(node_part(lp, nodes));
    }
  }
  set_routing(layers, placement.num_experts());
  if (inner_ != nullptr) inner_->set_routing(in_node, placement.num_experts());
}

void Dispatcher::set_routing(const std::vector<RoutingArrays>& layers, int num_experts) {
  const int N = comm_.size(), rank = comm_.rank();
  num_experts_ = num_experts;
  int max_slots = 0;
  for (const RoutingArrays& a : layers) {
    for (int32_t n : a.num_slots) max_slots = std::max(max_slots, n);
  }
  header_width_ = layout::kHeaderSlots + max_slots;
  tables_.clear();
  tables_.resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const RoutingArrays& a = layers[l];
    if (a.begin.empty()) continue;  // dense layer
    MOE_CHECK_AS("dispatch", static_cast<int>(a.num_slots.size()) == N,
                 "layer {}: routing for {} ranks, the communicator has {}", l, a.num_slots.size(),
                 N);
    std::vector<int32_t> flat;
    for (const auto* part : {&a.begin, &a.ranks, &a.slots, &a.num_slots}) {
      flat.insert(flat.end(), part->begin(), part->end());
    }
    LayerTable& t = tables_[l];
    t.data = kernels::Buffer<int32_t>(backend_, flat.size());
    backend_.upload(t.data.data(), flat.data(), flat.size() * sizeof(int32_t));
    const int32_t* base = t.data.data();
    t.table.num_experts = num_experts_;
    t.table.num_ranks = N;
    t.table.rank = rank;
    t.table.max_local_slots = max_slots;
    t.table.replica_begin = base;
    t.table.replica_rank = base + a.begin.size();
    t.table.replica_slot = base + a.begin.size() + a.ranks.size();
    t.table.rank_num_slots = base + a.begin.size() + 2 * a.ranks.size();
    t.local_slots = a.num_slots[static_cast<size_t>(rank)];
  }
  stats_ = kernels::Buffer<int32_t>(
      backend_, static_cast<size_t>(std::max<int64_t>(1, static_cast<int64_t>(layers.size())) *
                                    block_ints()));
  host_blocks_.assign(tables_.size(), {});
  dispatched_.assign(tables_.size(), 0);
  collectives_.assign(tables_.size(), 0);
}

void Dispatcher::start_forwarded(int layer, const float* rows, int64_t num_rows,
                                 const kernels::RouteEntry* routes) {
  forwarded_ = routes;
  start_dispatch(layer, rows, num_rows, nullptr, nullptr);
}

DispatchHandle Dispatcher::forward_in_node(DispatchHandle&& received) {
  const int64_t R = received.num_recv_rows, H = hidden_;
  const int k = top_k_;
  received_ = std::move(received);
  const kernels::RouteEntry* routes = received_.recv_routes;
  node_rows_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(R, 1) * H));
  if (R > 0) backend_.gather_rows(received_.recv_rows, H, received_.row_at, R, node_rows_.data());
  if (R > unit_rows_) {
    // Row r is pair r with weight 1 (1 * x is exactly x): the combine returns node_sums_ as is.
    const int64_t n = std::max<int64_t>(R, 2 * unit_rows_);
    std::vector<kernels::RouteEntry> unit(static_cast<size_t>(n * k));
    std::vector<int32_t> pairs(static_cast<size_t>(n * k), -1);
    for (int64_t r = 0; r < n; ++r) {
      unit[static_cast<size_t>(r * k)] = kernels::RouteEntry{0, 1.0f};
      pairs[static_cast<size_t>(r * k)] = static_cast<int32_t>(r);
    }
    unit_routes_.assign(backend_, unit.data(), unit.size());
    unit_pairs_.assign(backend_, pairs.data(), pairs.size());
    unit_rows_ = n;
  }
  received_.recv_routes = unit_routes_.data();
  received_.pair_of_entry = unit_pairs_.data();
  inner_->start_forwarded(received_.layer, node_rows_.data(), R, routes);
  return inner_->finish_dispatch();
}

void Dispatcher::add_node_level(const std::vector<LayerLoad>& in_node,
                                std::vector<LayerLoad>& loads) const {
  // The pairs and rows each rank of this node computes came through this rank's node exchange
  // (one proxy per source and node): in world ranks, they are the job's per-rank loads once
  // summed over ranks. Traffic adds both levels; a row forwarded inside the node after crossing
  // nodes counts at both hops, what stays on this rank is the node level's.
  const NodeLayout& nodes = comm_.node_layout();
  const int first = nodes.first_rank(nodes.node);
  for (size_t l = 0; l < loads.size(); ++l) {
    if (!dispatched_[l]) continue;
    LayerLoad& load = loads[l];
    const LayerLoad& node = in_node[l];
    load.tokens_per_rank.assign(load.tokens_per_rank.size(), 0);
    load.rows_per_rank.assign(load.rows_per_rank.size(), 0);
    for (size_t i = 0; i < node.tokens_per_rank.size(); ++i) {
      load.tokens_per_rank[first + i] = node.tokens_per_rank[i];
      load.rows_per_rank[first + i] = node.rows_per_rank[i];
    }
    ExchangeStats t = load.traffic;
    t += node.traffic;
    t.rows_kept_local = node.traffic.rows_kept_local;
    t.bytes_kept_local = node.traffic.bytes_kept_local;
    t.rows_received = node.traffic.rows_received;
    t.pairs_received = node.traffic.pairs_received;
    load.traffic = t;
  }
}

}  // namespace moe::parallel
