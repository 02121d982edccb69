// Routing spec parsing: one allowed-key list per kind, so `s: 1.2` under `uniform` is a typo
// caught with its line rather than a silently ignored knob.
#include "runtime/io/routing_spec.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <map>

namespace moe::runtime {
namespace {

namespace y = parallel::yaml;

const std::map<std::string, std::vector<std::string>>& kind_keys() {
  static const std::map<std::string, std::vector<std::string>> keys = {
      {"router", {"kind"}},
      {"uniform", {"kind", "seed"}},
      {"zipf", {"kind", "seed", "s"}},
      {"hotset", {"kind", "seed", "hot_experts", "hot_share"}},
      {"drift", {"kind", "seed", "s", "period", "shift"}},
      {"topics", {"kind", "seed", "topics", "experts_per_topic", "mix"}},
      {"replay", {"kind", "trace"}},
  };
  return keys;
}

std::string resolve(const std::string& base_file, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty() || fs::path(path).is_absolute()) return path;
  const fs::path beside = fs::path(base_file).parent_path() / path;
  std::error_code ec;
  if (fs::exists(beside, ec)) return beside.lexically_normal().string();
  return path;
}

}  // namespace

const std::vector<std::string>& routing_kinds() {
  static const std::vector<std::string> kinds = {"router", "uniform", "zipf",  "hotset",
                                                 "drift",  "topics",  "replay"};
  return kinds;
}

std::string RoutingSpec::describe() const {
  if (kind == "router") return "router";
  if (kind == "uniform") return fmt::format("uniform(seed={})", seed);
  if (kind == "zipf") return fmt::format("zipf(s={:g}, seed={})", s, seed);
  if (kind == "hotset") {
    return fmt::format("hotset(hot_experts={}, hot_share={:g}, seed={})", hot_experts, hot_share,
                       seed);
  }
  if (kind == "drift") {
    return fmt::format("drift(s={:g}, period={}, shift={}, seed={})", s, period, shift, seed);
  }
  if (kind == "topics") {
    return fmt::format("topics(topics={}, experts_per_topic={}, mix={:g}, seed={})", topics,
                       experts_per_topic, mix, seed);
  }
  return fmt::format("replay({})", trace);
}

RoutingSpec parse_routing_spec(const y::Doc& doc, const YAML::Node& node,
                               const std::string& key_path) {
  if (!node.IsMap())
    y::fail(doc, node, key_path, "expected a mapping such as {kind: zipf, s: 1.2}");
  const auto key = [&](const char* k) { return key_path + "." + k; };
  RoutingSpec r;
  r.source = fmt::format("{}:{}", doc.path, y::line_of(node));
  r.kind = y::require<std::string>(doc, node, "kind", key("kind"));
  const auto keys = kind_keys().find(r.kind);
  if (keys == kind_keys().end()) {
    y::fail(doc, node["kind"], key_path + ".kind",
            fmt::format("unknown routing kind '{}' (known: {})", r.kind,
                        fmt::join(routing_kinds(), ", ")));
  }
  y::reject_unknown_keys(doc, node, keys->second, key_path);

  const int64_t seed = y::value_or<int64_t>(doc, node, "seed", 1, key("seed"));
  if (seed < 0) y::fail(doc, node["seed"], key("seed"), "must be >= 0");
  r.seed = static_cast<uint64_t>(seed);
  r.s = y::value_or<double>(doc, node, "s", r.s, key("s"));
  if (!(r.s >= 0 && r.s <= 16)) y::fail(doc, node["s"], key("s"), "must be in [0, 16]");
  r.hot_experts = y::value_or<int64_t>(doc, node, "hot_experts", r.hot_experts, key("hot_experts"));
  if (r.hot_experts < 1) y::fail(doc, node["hot_experts"], key("hot_experts"), "must be >= 1");
  r.hot_share = y::value_or<double>(doc, node, "hot_share", r.hot_share, key("hot_share"));
  if (!(r.hot_share >= 0 && r.hot_share <= 1)) {
    y::fail(doc, node["hot_share"], key("hot_share"), "must be in [0, 1]");
  }
  r.period = y::value_or<int64_t>(doc, node, "period", r.period, key("period"));
  if (r.period < 1) y::fail(doc, node["period"], key("period"), "must be >= 1");
  r.shift = y::value_or<int64_t>(doc, node, "shift", r.shift, key("shift"));
  if (r.shift < 0) y::fail(doc, node["shift"], key("shift"), "must be >= 0");
  r.topics = y::value_or<int64_t>(doc, node, "topics", r.topics, key("topics"));
  if (r.topics < 1) y::fail(doc, node["topics"], key("topics"), "must be >= 1");
  r.experts_per_topic = y::value_or<int64_t>(doc, node, "experts_per_topic", r.experts_per_topic,
                                             key("experts_per_topic"));
  if (r.experts_per_topic < 1) {
    y::fail(doc, node["experts_per_topic"], key("experts_per_topic"), "must be >= 1");
  }
  r.mix = y::value_or<double>(doc, node, "mix", r.mix, key("mix"));
  if (!(r.mix >= 0 && r.mix <= 1)) y::fail(doc, node["mix"], key("mix"), "must be in [0, 1]");
  if (r.kind == "replay") {
    r.trace = resolve(doc.path, y::require<std::string>(doc, node, "trace", key("trace")));
  }
  return r;
}

}  // namespace moe::runtime
