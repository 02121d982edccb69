// What routes a run's tokens: the model's own router, a seeded synthetic distribution, or a
// replayed trace (a run config's `workload.routing`; experiment workloads). Plain data; the hook
// that realises it is runtime/model/synthetic_routing.h. Keys not used by a kind are rejected.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/yaml_util.h"

namespace moe::runtime {

struct RoutingSpec {
  std::string kind = "router";  // router | uniform | zipf | hotset | drift | topics | replay
  uint64_t seed = 1;
  double s = 1.2;                     // zipf, drift: exponent of popularity 1 / rank^s
  int64_t hot_experts = 8;            // hotset: size of the hot subset
  double hot_share = 0.5;             // hotset: share of picks that go to the hot subset
  int64_t period = 1;                 // drift: steps between moves of the popularity order
  int64_t shift = 1;                  // drift: popularity ranks the order moves per period
  int64_t topics = 8;                 // topics: number of topics
  int64_t experts_per_topic = 16;     // topics: experts each topic prefers
  double mix = 0.1;                   // topics: share of picks drawn from all experts instead
  std::string trace;                  // replay: trace file
  std::string source = "<built-in>";  // "file:line" of the spec, for messages

  bool is_router() const { return kind == "router"; }
  std::string describe() const;  // "zipf(s=1.2, seed=3)", ...
};

const std::vector<std::string>& routing_kinds();

// Parses a routing mapping (`node` at `key_path`, e.g. "workload.routing"); errors name the
// file, key and line. A relative `trace` resolves against the YAML's folder first.
RoutingSpec parse_routing_spec(const parallel::yaml::Doc& doc, const YAML::Node& node,
                               const std::string& key_path);

}  // namespace moe::runtime
