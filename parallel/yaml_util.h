// Typed YAML access with errors that name the file, the key and the line ("config" subsystem).
// Shared by placement files (parallel/) and model/run configs (runtime/); lives here because
// parallel/ is the lowest layer that knows about files.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moe::parallel::yaml {

// A loaded YAML document and the path it came from.
struct Doc {
  std::string path;
  YAML::Node root;
};

// Throws moe::Error("config") when the file is missing, unreadable, not YAML, or not a mapping.
Doc load(const std::string& path);

// 1-based line of a node (0 when unknown).
int line_of(const YAML::Node& node);

// Throws "<path>:<line>: key '<key>': <message>".
[[noreturn]] void fail(const Doc& doc, const YAML::Node& at, const std::string& key,
                       const std::string& message);

// Typed getters for scalar keys of a mapping node. `key_path` is the dotted path used in
// messages (e.g. "workload.prompt_len"). Types: int64_t, double, bool, std::string.
template <class T>
T require(const Doc& doc, const YAML::Node& map, const std::string& key,
          const std::string& key_path = "");
template <class T>
std::optional<T> optional(const Doc& doc, const YAML::Node& map, const std::string& key,
                          const std::string& key_path = "");
template <class T>
T value_or(const Doc& doc, const YAML::Node& map, const std::string& key, T fallback,
           const std::string& key_path = "") {
  auto v = optional<T>(doc, map, key, key_path);
  return v ? *v : fallback;
}
// Converts a scalar node to T or fails naming key_path.
template <class T>
T as(const Doc& doc, const YAML::Node& node, const std::string& key_path);
// A sequence of integers (fails on any non-integer element, naming its line).
std::vector<int64_t> int_list(const Doc& doc, const YAML::Node& node, const std::string& key_path);

// Fails on any key of `map` not in `allowed` (catches typos such as "num_expert").
void reject_unknown_keys(const Doc& doc, const YAML::Node& map,
                         const std::vector<std::string>& allowed, const std::string& where = "");

// Applies "a.b.c=value" overrides (--set) to a document; the value is parsed as YAML.
void apply_override(Doc& doc, const std::string& assignment);

}  // namespace moe::parallel::yaml
