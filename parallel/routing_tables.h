// Routing tables of the expert-parallel exchange as flat arrays (what parallel::Dispatcher
// uploads as kernels::RoutingTable), built from a placement: the flat exchange's, and the two
// levels of the node-first exchange (to each node's proxy; inside one node). Pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/node_layout.h"
#include "parallel/placement.h"

namespace moe::parallel {

// One layer's routing: replica_begin [E + 1], replica_rank and replica_slot [replicas],
// rank_num_slots [N] (kernels::RoutingTable's arrays).
struct RoutingArrays {
  std::vector<int32_t> begin, ranks, slots, num_slots;
};

// The flat routing: every replica of e where the placement puts it.
RoutingArrays flat_routing(const LayerPlacement& lp);

// The node-first routing of the rank `nodes` describes: expert e goes to the rank of this rank's
// local index on each node holding a replica of e (once per node, nodes ascending), and its
// "slot" there is e itself, the id the node's own exchange routes by; every rank has E slots.
RoutingArrays proxy_routing(const LayerPlacement& lp, const NodeLayout& nodes);

// The part of `lp` on the node of the rank `nodes` describes, its ranks numbered by local index
// (the same local slots; experts elsewhere get no replica).
LayerPlacement node_part(const LayerPlacement& lp, const NodeLayout& nodes);

}  // namespace moe::parallel
