// Routing trace files on top of the safetensors reader and writer. Nothing in a file is trusted
// until read_trace returns: names, dtypes, shapes and metadata are checked against each other,
// then every id row (range, no repeats), so replay and placement fitting can index blindly.
#include "runtime/io/trace.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>
#include <optional>

#include "kernels/common/check.h"
#include "runtime/io/safetensors.h"

namespace moe::runtime {
namespace {

constexpr const char* kIdsSuffix = ".topk_ids";
constexpr const char* kWeightsSuffix = ".topk_weights";

std::string ids_name(int64_t layer) {
  return fmt::format("layers.{}{}", layer, kIdsSuffix);
}
std::string weights_name(int64_t layer) {
  return fmt::format("layers.{}{}", layer, kWeightsSuffix);
}

std::optional<int64_t> parse_int(std::string_view text) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

int64_t metadata_int(const SafetensorsHeader& h, const std::string& key, const std::string& path) {
  const auto it = h.metadata.find(key);
  MOE_CHECK_AS("trace", it != h.metadata.end(),
               "{}: metadata key '{}' is missing (a trace needs num_experts, top_k, num_layers)",
               path, key);
  const auto v = parse_int(it->second);
  MOE_CHECK_AS("trace", v && *v > 0, "{}: metadata '{}' is '{}', expected a positive integer", path,
               key, it->second);
  return *v;
}

// "layers.{l}.topk_ids" -> (l, false), "layers.{l}.topk_weights" -> (l, true); else nullopt.
std::optional<std::pair<int64_t, bool>> parse_tensor_name(const std::string& name) {
  constexpr std::string_view kPrefix = "layers.";
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  const std::string_view rest = std::string_view(name).substr(kPrefix.size());
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const auto layer = parse_int(rest.substr(0, dot));
  if (!layer || *layer < 0) return std::nullopt;
  const std::string_view suffix = rest.substr(dot);
  if (suffix == kIdsSuffix) return std::make_pair(*layer, false);
  if (suffix == kWeightsSuffix) return std::make_pair(*layer, true);
  return std::nullopt;
}

template <class T>
std::vector<T> copy_elements(const SafetensorsFile& f, const SafetensorsTensor& t) {
  std::vector<T> out(static_cast<size_t>(t.numel));
  const auto bytes = f.data(t);
  if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

}  // namespace

void check_trace(const RoutingTrace& t, const std::string& path) {
  MOE_CHECK_AS("trace", t.num_experts > 0 && t.top_k > 0 && t.num_layers > 0,
               "{}: num_experts, top_k and num_layers must be positive (got {}, {}, {})", path,
               t.num_experts, t.top_k, t.num_layers);
  MOE_CHECK_AS("trace", t.top_k <= t.num_experts, "{}: top_k {} exceeds num_experts {}", path,
               t.top_k, t.num_experts);
  MOE_CHECK_AS("trace", !t.layers.empty(), "{}: empty trace: no layer has routing", path);
  MOE_CHECK_AS("trace", t.ids.size() == t.layers.size() && t.weights.size() == t.layers.size(),
               "{}: {} layers listed but {} id and {} weight arrays", path, t.layers.size(),
               t.ids.size(), t.weights.size());
  const int64_t tokens = t.num_tokens(0);
  MOE_CHECK_AS("trace", tokens > 0, "{}: empty trace: 0 tokens", path);
  for (size_t i = 0; i < t.layers.size(); ++i) {
    const int64_t l = t.layers[i];
    MOE_CHECK_AS("trace", l >= 0 && l < t.num_layers, "{}: layer {} is outside 0..{}", path, l,
                 t.num_layers - 1);
    MOE_CHECK_AS("trace", i == 0 || t.layers[i - 1] < l,
                 "{}: layers must be listed once, ascending (layer {} after {})", path, l,
                 t.layers[i - 1]);
    MOE_CHECK_AS("trace", static_cast<int64_t>(t.ids[i].size()) == tokens * t.top_k,
                 "{}: layer {} has {} ids, expected {} tokens x top_k {} like layer {}", path, l,
                 t.ids[i].size(), tokens, t.top_k, t.layers[0]);
    MOE_CHECK_AS("trace", t.weights[i].empty() || t.weights[i].size() == t.ids[i].size(),
                 "{}: layer {} has {} weights for {} ids", path, l, t.weights[i].size(),
                 t.ids[i].size());
    const int32_t* ids = t.ids[i].data();
    for (int64_t r = 0; r < tokens; ++r) {
      const int32_t* row = ids + r * t.top_k;
      for (int64_t j = 0; j < t.top_k; ++j) {
        MOE_CHECK_AS("trace", row[j] >= 0 && row[j] < t.num_experts,
                     "{}: layer {} token {}: expert id {} is outside 0..{}", path, l, r, row[j],
                     t.num_experts - 1);
        for (int64_t q = 0; q < j; ++q) {
          MOE_CHECK_AS("trace", row[q] != row[j],
                       "{}: layer {} token {}: expert {} appears twice in one top-k row", path, l,
                       r, row[j]);
        }
      }
    }
  }
}

void validate_trace(const RoutingTrace& t, const ModelConfig& config, const std::string& path) {
  check_trace(t, path);
  MOE_CHECK_AS("trace", t.num_experts == config.num_experts,
               "{}: trace has {} experts, model '{}' has {}", path, t.num_experts, config.name,
               config.num_experts);
  MOE_CHECK_AS("trace", t.top_k == config.num_experts_per_tok,
               "{}: trace has top_k {}, model '{}' routes to {} experts per token", path, t.top_k,
               config.name, config.num_experts_per_tok);
  MOE_CHECK_AS("trace", t.num_layers == config.num_hidden_layers,
               "{}: trace has {} layers, model '{}' has {}", path, t.num_layers, config.name,
               config.num_hidden_layers);
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (config.layer_is_moe(l)) moe_layers.push_back(l);
  }
  for (int64_t l : t.layers) {
    MOE_CHECK_AS("trace", config.layer_is_moe(l), "{}: layer {} is not a MoE layer of model '{}'",
                 path, l, config.name);
  }
  for (int64_t l : moe_layers) {
    MOE_CHECK_AS("trace", std::find(t.layers.begin(), t.layers.end(), l) != t.layers.end(),
                 "{}: no routing for MoE layer {} of model '{}' (tensor '{}' missing)", path, l,
                 config.name, ids_name(l));
  }
}

RoutingTrace read_trace(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  const SafetensorsHeader& h = f.header();
  RoutingTrace t;
  t.num_experts = metadata_int(h, "num_experts", path);
  t.top_k = metadata_int(h, "top_k", path);
  t.num_layers = metadata_int(h, "num_layers", path);

  std::map<int64_t, const SafetensorsTensor*> ids, weights;
  for (const SafetensorsTensor& tensor : h.tensors) {
    const auto parsed = parse_tensor_name(tensor.name);
    MOE_CHECK_AS("trace", parsed.has_value(),
                 "{}: unexpected tensor '{}' (a trace holds layers.{{l}}.topk_ids and "
                 "layers.{{l}}.topk_weights)",
                 path, tensor.name);
    const auto [layer, is_weights] = *parsed;
    MOE_CHECK_AS("trace", layer < t.num_layers, "{}: tensor '{}': layer {} is outside 0..{}", path,
                 tensor.name, layer, t.num_layers - 1);
    const SafetensorsDtype want = is_weights ? SafetensorsDtype::kF32 : SafetensorsDtype::kI32;
    MOE_CHECK_AS("trace", tensor.dtype == want, "{}: tensor '{}' is {}, expected {}", path,
                 tensor.name, dtype_name(tensor.dtype), dtype_name(want));
    MOE_CHECK_AS("trace", tensor.shape.size() == 2 && tensor.shape[1] == t.top_k,
                 "{}: tensor '{}' has shape [{}], expected [tokens, top_k={}]", path, tensor.name,
                 fmt::join(tensor.shape, ", "), t.top_k);
    (is_weights ? weights : ids)[layer] = &tensor;
  }
  MOE_CHECK_AS("trace", !ids.empty(), "{}: empty trace: no layers.{{l}}.topk_ids tensor", path);
  for (const auto& [layer, w] : weights) {
    const auto it = ids.find(layer);
    MOE_CHECK_AS("trace", it != ids.end(), "{}: tensor '{}' has no '{}' beside it", path, w->name,
                 ids_name(layer));
    MOE_CHECK_AS("trace", w->shape == it->second->shape,
                 "{}: tensor '{}' has shape [{}] but '{}' has [{}]", path, w->name,
                 fmt::join(w->shape, ", "), it->second->name, fmt::join(it->second->shape, ", "));
  }
  const int64_t tokens = ids.begin()->second->shape[0];
  for (const auto& [layer, tensor] : ids) {
    MOE_CHECK_AS("trace", tensor->shape[0] == tokens,
                 "{}: tensor '{}' has {} tokens but '{}' has {}", path, tensor->name,
                 tensor->shape[0], ids.begin()->second->name, tokens);
    t.layers.push_back(layer);
    t.ids.push_back(copy_elements<int32_t>(f, *tensor));
    const auto w = weights.find(layer);
    t.weights.push_back(w == weights.end() ? std::vector<float>{}
                                           : copy_elements<float>(f, *w->second));
  }
  check_trace(t, path);
  return t;
}

void write_trace(const std::string& path, const RoutingTrace& t) {
  check_trace(t, path);
  const int64_t tokens = t.num_tokens(0);
  std::vector<SafetensorsTensorView> tensors;
  for (size_t i = 0; i < t.layers.size(); ++i) {
    tensors.push_back({ids_name(t.layers[i]),
                       SafetensorsDtype::kI32,
                       {tokens, t.top_k},
                       std::as_bytes(std::span<const int32_t>(t.ids[i]))});
    if (!t.weights[i].empty()) {
      tensors.push_back({weights_name(t.layers[i]),
                         SafetensorsDtype::kF32,
                         {tokens, t.top_k},
                         std::as_bytes(std::span<const float>(t.weights[i]))});
    }
  }
  write_safetensors(path, tensors,
                    {{"num_experts", std::to_string(t.num_experts)},
                     {"top_k", std::to_string(t.top_k)},
                     {"num_layers", std::to_string(t.num_layers)},
                     {"format", "moe-ep routing trace"}});
}

}  // namespace moe::runtime
