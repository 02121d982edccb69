// Model configuration loading (model YAML, HF config.json) and validation. Both loaders read
// the same key table through one KeyReader interface, so required keys, defaults (HF's
// Qwen3MoeConfig defaults) and messages agree; every failure is one moe::Error("config")
// naming the file, the key and, where known, the line.
#include "runtime/io/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>

#include "kernels/common/check.h"
#include "parallel/yaml_util.h"

namespace moe::runtime {
namespace {

namespace fs = std::filesystem;
namespace yu = moe::parallel::yaml;

// Dimensions are used as int32 indices by kernels and routing; anything larger is a typo.
constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;
// Parameter counts stay exact in int64 and in double far below this.
constexpr double kMaxTotalParams = 1e15;

const std::vector<std::string> kRequiredIntKeys = {
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "moe_intermediate_size",
    "num_experts_per_tok"};  // num_experts: see experts_key()

// Keys HF configs carry that do not change the forward; accepted (and ignored) in YAML too so
// a config.json pasted into a model YAML loads.
const std::vector<std::string> kIgnoredHfKeys = {"architectures",
                                                 "attention_dropout",
                                                 "initializer_range",
                                                 "max_window_layers",
                                                 "output_router_logits",
                                                 "router_aux_loss_coef",
                                                 "sliding_window",
                                                 "torch_dtype",
                                                 "dtype",
                                                 "transformers_version",
                                                 "use_cache",
                                                 "pad_token_id"};

// Keys this loader reads; a model YAML may contain only these (plus kIgnoredHfKeys).
const std::vector<std::string> kModelKeys = {"name",
                                             "seed",
                                             "vocab_size",
                                             "hidden_size",
                                             "num_hidden_layers",
                                             "num_attention_heads",
                                             "num_key_value_heads",
                                             "head_dim",
                                             "intermediate_size",
                                             "moe_intermediate_size",
                                             "num_experts",
                                             "num_local_experts",
                                             "num_experts_per_tok",
                                             "norm_topk_prob",
                                             "decoder_sparse_step",
                                             "mlp_only_layers",
                                             "rms_norm_eps",
                                             "rope_theta",
                                             "rope_parameters",
                                             "rope_scaling",
                                             "max_position_embeddings",
                                             "tie_word_embeddings",
                                             "bos_token_id",
                                             "eos_token_id",
                                             "model_type",
                                             "hidden_act",
                                             "attention_bias",
                                             "use_sliding_window",
                                             "quantization_config"};

// Typed access to one mapping of a loaded document (YAML, or JSON read by yaml-cpp, which keeps
// every key's line). Key paths in messages are dotted from the document root
// ("rope_parameters.rope_theta").
class KeyReader {
 public:
  KeyReader(const yu::Doc& doc, YAML::Node map, std::string prefix)
      : doc_(doc), map_(map), prefix_(std::move(prefix)) {}
  // Exists and is not null.
  bool present(const std::string& key) const {
    YAML::Node n = node(key);
    return n.IsDefined() && !n.IsNull();
  }
  // A missing key of a const yaml-cpp map is an invalid node whose Type() throws: test first.
  bool is_list(const std::string& key) const { return present(key) && node(key).IsSequence(); }
  bool is_map(const std::string& key) const { return present(key) && node(key).IsMap(); }
  int64_t get_int(const std::string& key) const {
    return yu::require<int64_t>(doc_, map_, key, path_of(key));
  }
  double get_double(const std::string& key) const {
    return yu::require<double>(doc_, map_, key, path_of(key));
  }
  bool get_bool(const std::string& key) const {
    return yu::require<bool>(doc_, map_, key, path_of(key));
  }
  std::string get_string(const std::string& key) const {
    return yu::require<std::string>(doc_, map_, key, path_of(key));
  }
  std::vector<int64_t> get_int_list(const std::string& key) const {
    return yu::int_list(doc_, node(key), path_of(key));
  }
  std::vector<std::string> get_string_list(const std::string& key) const {
    std::vector<std::string> out;
    const YAML::Node list = node(key);
    for (size_t i = 0; i < list.size(); ++i) {
      out.push_back(yu::as<std::string>(doc_, list[i], fmt::format("{}[{}]", path_of(key), i)));
    }
    return out;
  }
  KeyReader child(const std::string& key) const {
    if (!is_map(key)) fail(key, "expected a mapping (an object)");
    return KeyReader(doc_, node(key), path_of(key));
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (auto it = map_.begin(); it != map_.end(); ++it) {
      if (it->first.IsScalar()) out.push_back(it->first.Scalar());
    }
    return out;
  }
  // 1-based line of the key (0 when unknown).
  int line(const std::string& key) const {
    for (auto it = map_.begin(); it != map_.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) return yu::line_of(it->first);
    }
    return 0;
  }
  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    YAML::Node n = node(key);
    yu::fail(doc_, n.IsDefined() ? n : map_, path_of(key), message);
  }
  std::string path_of(const std::string& key) const {
    return prefix_.empty() ? key : prefix_ + "." + key;
  }

 private:
  YAML::Node node(const std::string& key) const {
    const YAML::Node& m = map_;
    return m[key];
  }
  const yu::Doc& doc_;
  YAML::Node map_;
  std::string prefix_;
};

// ---- shared key table ----------------------------------------------------------------------

template <class T, class Get>
T opt(const KeyReader& r, const std::string& key, T fallback, Get get) {
  return r.present(key) ? get(key) : fallback;
}

// The rope_theta of a `rope_parameters` mapping (newer HF configs). Only plain RoPE is run.
std::optional<double> read_rope_parameters(const KeyReader& root) {
  if (!root.present("rope_parameters")) return std::nullopt;
  const KeyReader rp = root.child("rope_parameters");
  for (const auto& k : rp.keys()) {
    if (k != "rope_theta" && k != "rope_type") {
      rp.fail(k, "not supported (only rope_theta and rope_type: default are understood)");
    }
  }
  if (rp.present("rope_type")) {
    std::string type = rp.get_string("rope_type");
    if (type != "default")
      rp.fail("rope_type", fmt::format("'{}' is not supported (only 'default')", type));
  }
  if (!rp.present("rope_theta")) rp.fail("rope_theta", "missing required key");
  return rp.get_double("rope_theta");
}

// Keys that must hold one value because the forward implements only that (Qwen3-MoE).
void check_supported(const KeyReader& r) {
  if (r.present("model_type")) {
    std::string t = r.get_string("model_type");
    if (t != "qwen3_moe") {
      r.fail("model_type", fmt::format("'{}' is not supported (only qwen3_moe)", t));
    }
  }
  if (r.present("hidden_act")) {
    std::string a = r.get_string("hidden_act");
    if (a != "silu") r.fail("hidden_act", fmt::format("'{}' is not supported (only silu)", a));
  }
  if (r.present("attention_bias") && r.get_bool("attention_bias")) {
    r.fail("attention_bias", "true is not supported (Qwen3-MoE projections have no bias)");
  }
  if (r.present("use_sliding_window") && r.get_bool("use_sliding_window")) {
    r.fail("use_sliding_window", "true is not supported (full causal attention only)");
  }
  if (r.present("rope_scaling")) {
    r.fail("rope_scaling", "RoPE scaling is not supported (must be null or absent)");
  }
}

// `quantization_config`: block-quantized FP8 (the only format read), every other value refused.
WeightQuantization read_quantization(const KeyReader& root) {
  WeightQuantization q;
  if (!root.present("quantization_config")) return q;
  const KeyReader r = root.child("quantization_config");
  for (const auto& k : r.keys()) {
    if (k != "quant_method" && k != "fmt" && k != "weight_block_size" && k != "activation_scheme" &&
        k != "modules_to_not_convert" && k != "dequantize") {
      r.fail(k,
             "not understood (an FP8 quantization_config has quant_method, fmt, "
             "weight_block_size, activation_scheme, modules_to_not_convert)");
    }
  }
  if (!r.present("quant_method")) r.fail("quant_method", "missing required key");
  const std::string method = r.get_string("quant_method");
  if (method != "fp8") {
    r.fail("quant_method", fmt::format("'{}' is not supported (only fp8: e4m3 weights with "
                                       "128 x 128 block scales)",
                                       method));
  }
  if (r.present("fmt") && r.get_string("fmt") != "e4m3") {
    r.fail("fmt", fmt::format("'{}' is not supported (only e4m3)", r.get_string("fmt")));
  }
  if (r.present("weight_block_size") &&
      r.get_int_list("weight_block_size") != std::vector<int64_t>{128, 128}) {
    r.fail("weight_block_size", fmt::format("[{}] is not supported (only [128, 128])",
                                            fmt::join(r.get_int_list("weight_block_size"), ", ")));
  }
  if (r.present("activation_scheme") && r.get_string("activation_scheme") != "dynamic") {
    r.fail("activation_scheme",
           fmt::format("'{}' is not supported (only dynamic: no activation scales are stored)",
                       r.get_string("activation_scheme")));
  }
  if (r.present("dequantize") && r.get_bool("dequantize")) {
    r.fail("dequantize", "true is not supported (the weights are read as stored)");
  }
  if (r.present("modules_to_not_convert")) {
    const KeyReader list = r;
    if (!list.is_list("modules_to_not_convert")) {
      r.fail("modules_to_not_convert", "expected a list of module names");
    }
    q.modules_to_not_convert = r.get_string_list("modules_to_not_convert");
  }
  q.fp8 = true;
  return q;
}

// Token ids: an integer, or (eos in HF configs) a list whose first element is taken.
int64_t read_token_id(const KeyReader& r, const std::string& key) {
  if (!r.present(key)) return -1;
  if (r.is_list(key)) {
    auto ids = r.get_int_list(key);
    return ids.empty() ? -1 : ids.front();
  }
  return r.get_int(key);
}

void record_lines(const KeyReader& r, ModelConfig& c) {
  for (const auto& k : r.keys()) {
    int l = r.line(k);
    if (l > 0) c.key_lines[r.path_of(k)] = l;
  }
  if (r.is_map("rope_parameters")) {
    const KeyReader rp = r.child("rope_parameters");
    for (const auto& k : rp.keys()) {
      int l = rp.line(k);
      if (l > 0) c.key_lines[rp.path_of(k)] = l;
    }
  }
}

// transformers 5 writes the expert count as `num_local_experts` (an attribute alias of
// `num_experts` in Qwen3MoeConfig); accept either, and refuse two that disagree.
std::string experts_key(const KeyReader& r) {
  const bool a = r.present("num_experts"), b = r.present("num_local_experts");
  if (a && b && r.get_int("num_experts") != r.get_int("num_local_experts")) {
    r.fail("num_local_experts",
           fmt::format("{} disagrees with num_experts {}", r.get_int("num_local_experts"),
                       r.get_int("num_experts")));
  }
  if (!a && !b) r.fail("num_experts", "missing required key (or num_local_experts)");
  return a ? "num_experts" : "num_local_experts";
}

ModelConfig read_model(const KeyReader& r, const std::string& source,
                       const std::string& default_name) {
  ModelConfig c;
  c.source = source;
  record_lines(r, c);
  check_supported(r);
  for (const auto& k : kRequiredIntKeys) {
    if (!r.present(k)) r.fail(k, "missing required key");
  }
  auto get_int = [&](const std::string& k) { return r.get_int(k); };
  auto get_double = [&](const std::string& k) { return r.get_double(k); };
  auto get_bool = [&](const std::string& k) { return r.get_bool(k); };

  c.name = opt<std::string>(r, "name", default_name,
                            [&](const std::string& k) { return r.get_string(k); });
  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.num_hidden_layers = r.get_int("num_hidden_layers");
  c.num_attention_heads = r.get_int("num_attention_heads");
  c.num_key_value_heads = r.get_int("num_key_value_heads");
  c.intermediate_size = r.get_int("intermediate_size");
  c.moe_intermediate_size = r.get_int("moe_intermediate_size");
  c.num_experts = r.get_int(experts_key(r));
  c.num_experts_per_tok = r.get_int("num_experts_per_tok");
  // HF: head_dim defaults to hidden_size / num_attention_heads (integer division).
  int64_t default_head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  c.head_dim = opt<int64_t>(r, "head_dim", default_head_dim, get_int);
  if (!r.present("head_dim") && c.num_attention_heads > 0 &&
      c.hidden_size % c.num_attention_heads != 0) {
    r.fail("head_dim", fmt::format("missing, and hidden_size {} is not divisible by "
                                   "num_attention_heads {} to give a default",
                                   c.hidden_size, c.num_attention_heads));
  }
  c.norm_topk_prob = opt<bool>(r, "norm_topk_prob", c.norm_topk_prob, get_bool);
  c.decoder_sparse_step = opt<int64_t>(r, "decoder_sparse_step", c.decoder_sparse_step, get_int);
  c.mlp_only_layers =
      r.present("mlp_only_layers") ? r.get_int_list("mlp_only_layers") : std::vector<int64_t>{};
  c.rms_norm_eps = opt<double>(r, "rms_norm_eps", c.rms_norm_eps, get_double);
  std::optional<double> theta_param = read_rope_parameters(r);
  if (r.present("rope_theta")) {
    c.rope_theta = r.get_double("rope_theta");
    if (theta_param && *theta_param != c.rope_theta) {
      r.fail("rope_theta", fmt::format("{} disagrees with rope_parameters.rope_theta {}",
                                       c.rope_theta, *theta_param));
    }
  } else {
    c.rope_theta = theta_param.value_or(c.rope_theta);
  }
  c.max_position_embeddings =
      opt<int64_t>(r, "max_position_embeddings", c.max_position_embeddings, get_int);
  c.tie_word_embeddings = opt<bool>(r, "tie_word_embeddings", c.tie_word_embeddings, get_bool);
  c.bos_token_id = read_token_id(r, "bos_token_id");
  c.eos_token_id = read_token_id(r, "eos_token_id");
  int64_t seed = opt<int64_t>(r, "seed", 0, get_int);
  if (seed < 0) r.fail("seed", fmt::format("must be >= 0, got {}", seed));
  c.seed = static_cast<uint64_t>(seed);
  c.quantization = read_quantization(r);
  c.validate();
  return c;
}

// "file:line: key 'k': message" using the lines the loader recorded.
[[noreturn]] void fail_key(const ModelConfig& c, const std::string& key,
                           const std::string& message) {
  const std::string src = c.source.empty() ? std::string("<model config>") : c.source;
  auto it = c.key_lines.find(key);
  if (it == c.key_lines.end()) it = c.key_lines.find(key.substr(0, key.find('[')));
  if (it != c.key_lines.end() && it->second > 0) {
    MOE_THROW("config", "{}:{}: key '{}': {}", src, it->second, key, message);
  }
  MOE_THROW("config", "{}: key '{}': {}", src, key, message);
}

std::string layer_list(const std::vector<int64_t>& layers) {
  constexpr size_t kShown = 8;
  std::vector<int64_t> head(layers.begin(), layers.begin() + std::min(layers.size(), kShown));
  return fmt::format("[{}{}]", fmt::join(head, ", "), layers.size() > kShown ? ", ..." : "");
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Typos are the usual cause of an unknown key, so name the nearest model key when one is close.
void reject_unknown_model_keys(const yu::Doc& doc) {
  for (auto it = doc.root.begin(); it != doc.root.end(); ++it) {
    std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
    auto known = [&](const std::vector<std::string>& keys) {
      return std::find(keys.begin(), keys.end(), key) != keys.end();
    };
    if (known(kModelKeys) || known(kIgnoredHfKeys)) continue;
    std::string best;
    size_t best_distance = 4;  // farther than 3 edits is not a typo
    for (const auto& k : kModelKeys) {
      size_t d = edit_distance(key, k);
      if (d < best_distance) best_distance = d, best = k;
    }
    yu::fail(doc, it->first, key,
             best.empty()
                 ? "unknown key (model YAML keys are those of HF config.json, plus name and seed)"
                 : fmt::format("unknown key (did you mean '{}'?)", best));
  }
}

// Every dimension in [lo, kMaxDim].
void check_dimensions(const ModelConfig& c) {
  auto at_least = [&](const char* key, int64_t v, int64_t lo) {
    if (v < lo) fail_key(c, key, fmt::format("must be >= {}, got {}", lo, v));
    if (v > kMaxDim) fail_key(c, key, fmt::format("{} is too large (at most {})", v, kMaxDim));
  };
  at_least("vocab_size", c.vocab_size, 1);
  at_least("hidden_size", c.hidden_size, 1);
  at_least("num_hidden_layers", c.num_hidden_layers, 1);
  at_least("num_attention_heads", c.num_attention_heads, 1);
  at_least("num_key_value_heads", c.num_key_value_heads, 1);
  at_least("head_dim", c.head_dim, 1);
  at_least("intermediate_size", c.intermediate_size, 0);
  at_least("moe_intermediate_size", c.moe_intermediate_size, 0);
  at_least("num_experts", c.num_experts, 0);
  at_least("num_experts_per_tok", c.num_experts_per_tok, 0);
  at_least("decoder_sparse_step", c.decoder_sparse_step, 1);
  at_least("max_position_embeddings", c.max_position_embeddings, 1);
}

// Attention heads (RoPE pairs, GQA groups) and top-k against the expert count.
void check_heads_and_top_k(const ModelConfig& c) {
  if (c.head_dim % 2 != 0) {
    fail_key(c, "head_dim",
             fmt::format("{} is odd (RoPE rotates pairs of halves, needs an even head_dim)",
                         c.head_dim));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    fail_key(c, "num_key_value_heads",
             fmt::format("num_attention_heads {} is not divisible by num_key_value_heads {} (GQA "
                         "shares each kv head by a whole number of query heads)",
                         c.num_attention_heads, c.num_key_value_heads));
  }
  if (c.num_experts > 0) {
    if (c.num_experts_per_tok < 1) {
      fail_key(c, "num_experts_per_tok",
               fmt::format("{} < 1 (with num_experts {} every token needs at least one expert)",
                           c.num_experts_per_tok, c.num_experts));
    }
    if (c.num_experts_per_tok > c.num_experts) {
      fail_key(c, "num_experts_per_tok",
               fmt::format("{} > num_experts {} (top-k cannot exceed the number of experts)",
                           c.num_experts_per_tok, c.num_experts));
    }
  }
}

// mlp_only_layers in range, and an MLP width for each kind of layer the model has.
void check_layer_kinds(const ModelConfig& c) {
  for (size_t i = 0; i < c.mlp_only_layers.size(); ++i) {
    int64_t l = c.mlp_only_layers[i];
    if (l < 0 || l >= c.num_hidden_layers) {
      fail_key(c, fmt::format("mlp_only_layers[{}]", i),
               fmt::format("layer {} is out of range [0, {}) (num_hidden_layers {})", l,
                           c.num_hidden_layers, c.num_hidden_layers));
    }
  }
  std::vector<int64_t> dense, sparse;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    (c.layer_is_moe(l) ? sparse : dense).push_back(l);
  }
  if (!dense.empty() && c.intermediate_size == 0) {
    fail_key(c, "intermediate_size",
             fmt::format("0, but layers {} are dense (mlp_only_layers / decoder_sparse_step / "
                         "num_experts 0) and need a dense MLP width",
                         layer_list(dense)));
  }
  if (!sparse.empty() && c.moe_intermediate_size == 0) {
    fail_key(c, "moe_intermediate_size",
             fmt::format("0, but layers {} are MoE layers and need an expert width",
                         layer_list(sparse)));
  }
}

// Norm epsilon, RoPE base and the special token ids.
void check_scalars(const ModelConfig& c) {
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    fail_key(c, "rms_norm_eps", fmt::format("must be > 0, got {}", c.rms_norm_eps));
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    fail_key(c, "rope_theta", fmt::format("must be > 0, got {}", c.rope_theta));
  }
  for (const auto& [key, id] : {std::pair<const char*, int64_t>{"bos_token_id", c.bos_token_id},
                                {"eos_token_id", c.eos_token_id}}) {
    if (id < -1 || id >= c.vocab_size) {
      fail_key(c, key, fmt::format("{} is not a token id in [0, vocab_size {})", id, c.vocab_size));
    }
  }
}

// Products of the dimensions must stay exact in int64 (parameter and buffer counts).
void check_parameter_count(const ModelConfig& c) {
  double h = static_cast<double>(c.hidden_size);
  double per_layer = h * (2.0 * c.q_width() + 2.0 * c.kv_width()) +
                     static_cast<double>(c.num_experts) * (h + 3.0 * h * c.moe_intermediate_size) +
                     3.0 * h * c.intermediate_size;
  double total = per_layer * c.num_hidden_layers + 2.0 * h * c.vocab_size;
  if (total > kMaxTotalParams) {
    fail_key(c, "hidden_size",
             fmt::format("the dimensions give about {:.3g} parameters, more than this runtime "
                         "handles ({:.0g})",
                         total, kMaxTotalParams));
  }
}

}  // namespace

// ---- ModelConfig ---------------------------------------------------------------------------

void ModelConfig::validate() const {
  check_dimensions(*this);
  check_heads_and_top_k(*this);
  check_layer_kinds(*this);
  check_scalars(*this);
  check_parameter_count(*this);
}

bool ModelConfig::layer_is_moe(int64_t layer) const {
  MOE_CHECK(layer >= 0 && layer < num_hidden_layers, "layer {} out of range [0, {})", layer,
            num_hidden_layers);
  if (num_experts <= 0 || decoder_sparse_step < 1) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
    return false;
  }
  return (layer + 1) % decoder_sparse_step == 0;
}

std::vector<bool> ModelConfig::moe_layers() const {
  std::vector<bool> out(static_cast<size_t>(std::max<int64_t>(num_hidden_layers, 0)));
  for (int64_t l = 0; l < num_hidden_layers; ++l) out[static_cast<size_t>(l)] = layer_is_moe(l);
  return out;
}

std::string format_config(const ModelConfig& c) {
  return fmt::format(
      "model {} ({})\n"
      "  vocab_size {}  hidden_size {}  num_hidden_layers {}\n"
      "  num_attention_heads {}  num_key_value_heads {}  head_dim {}\n"
      "  num_experts {}  num_experts_per_tok {}  moe_intermediate_size {}  norm_topk_prob {}\n"
      "  intermediate_size {}  decoder_sparse_step {}  mlp_only_layers [{}]\n"
      "  rms_norm_eps {}  rope_theta {}  max_position_embeddings {}  tie_word_embeddings {}\n"
      "  bos_token_id {}  eos_token_id {}  seed {}{}",
      c.name, c.source.empty() ? "<built-in>" : c.source, c.vocab_size, c.hidden_size,
      c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_experts,
      c.num_experts_per_tok, c.moe_intermediate_size, c.norm_topk_prob, c.intermediate_size,
      c.decoder_sparse_step, fmt::join(c.mlp_only_layers, ", "), c.rms_norm_eps, c.rope_theta,
      c.max_position_embeddings, c.tie_word_embeddings, c.bos_token_id, c.eos_token_id, c.seed,
      c.quantization.fp8
          ? fmt::format("\n  quantization fp8 e4m3, 128 x 128 blocks, {} module(s) not converted",
                        c.quantization.modules_to_not_convert.size())
          : std::string());
}

// ---- loaders -------------------------------------------------------------------------------

ModelConfig load_model_yaml(const std::string& path) {
  yu::Doc doc = yu::load(path);
  reject_unknown_model_keys(doc);
  return read_model(KeyReader(doc, doc.root, ""), path, fs::path(path).stem().string());
}

ModelConfig load_hf_config(const std::string& path) {
  const yu::Doc doc = yu::load(path);  // .json: strict JSON, read as YAML (lines kept)
  // A checkpoint's name is its directory ("Qwen3-30B-A3B/config.json" -> "Qwen3-30B-A3B").
  const fs::path p = fs::absolute(fs::path(path)).lexically_normal();
  std::string name = p.parent_path().filename().string();
  if (name.empty()) name = p.stem().string();
  return read_model(KeyReader(doc, doc.root, ""), path, name);
}

ModelConfig load_model_config(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path cfg = fs::path(path) / "config.json";
    MOE_CHECK_AS("config", fs::exists(cfg, ec),
                 "{}: no config.json (expected an HF checkpoint directory or a model YAML)", path);
    return load_hf_config(cfg.string());
  }
  if (fs::path(path).extension() == ".json") return load_hf_config(path);
  return load_model_yaml(path);
}

}  // namespace moe::runtime
