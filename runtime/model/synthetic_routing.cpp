// Seeded routing distributions and trace replay. Randomness is counter-based (splitmix64 of
// seed, step, layer, sequence, position), never a stream shared between tokens, so a token's
// experts do not depend on which other tokens a rank holds or in which order it routes them.
#include "runtime/model/synthetic_routing.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/check.h"
#include "kernels/common/hash.h"

namespace moe::runtime {
namespace {

constexpr uint64_t kGolden = kGoldenGamma;

// The splitmix64 stream: each draw mixes the state, then advances it by the golden gamma.
uint64_t next_splitmix64(uint64_t& state) {
  const uint64_t r = splitmix64(state);
  state += kGolden;
  return r;
}

uint64_t combine(uint64_t h, uint64_t v) {
  return splitmix64(h ^ (v * kGolden + 0x632BE59BD9B4E019ull));
}

// Tags keep the per-layer permutation, the topic draw and the expert draws independent.
enum class Tag : uint64_t { kPermutation = 1, kTopic = 2, kPicks = 3 };

class Rng {
 public:
  explicit Rng(uint64_t key) : state_(key) {}
  uint64_t next() { return next_splitmix64(state_); }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  int64_t below(int64_t n) {
    return static_cast<int64_t>(
        (static_cast<unsigned __int128>(next()) * static_cast<uint64_t>(n)) >> 64);
  }

 private:
  uint64_t state_;
};

constexpr int64_t kMaxTopK = 256;

// Successive sampling of k distinct popularity ranks out of E into ranks[0..k): rejection of
// repeats first (cheap while p is not too concentrated), then an exact draw from the remaining
// mass; both draw from p restricted to unpicked ranks. `prob(i)` is rank i's popularity and
// `draw()` a draw from it with `rng`.
template <class Prob, class Draw>
void pick_distinct(int64_t E, int64_t k, Rng& rng, const Prob& prob, const Draw& draw,
                   const RoutingSpec& spec, int64_t* ranks) {
  constexpr int kMaxRejections = 64;
  const auto picked = [&](int64_t r, int64_t n) {
    return std::find(ranks, ranks + n, r) != ranks + n;
  };
  for (int64_t j = 0; j < k; ++j) {
    int64_t r = -1;
    for (int attempt = 0; attempt < kMaxRejections && r < 0; ++attempt) {
      const int64_t c = draw();
      if (!picked(c, j)) r = c;
    }
    if (r < 0) {
      double mass = 0;
      for (int64_t i = 0; i < E; ++i) mass += picked(i, j) ? 0.0 : prob(i);
      MOE_CHECK(mass > 0, "routing {}: no probability left for pick {}", spec.describe(), j);
      double u = rng.uniform() * mass;
      for (int64_t i = 0; i < E; ++i) {
        if (picked(i, j)) continue;
        r = i;
        u -= prob(i);
        if (u < 0) break;
      }
    }
    ranks[j] = r;
  }
}

uint64_t key_of(uint64_t seed, Tag tag, std::initializer_list<int64_t> fields) {
  uint64_t h = combine(seed, static_cast<uint64_t>(tag));
  for (int64_t f : fields) h = combine(h, static_cast<uint64_t>(f));
  return h;
}

}  // namespace

RoutingShape RoutingShape::of(const ModelConfig& c) {
  return {c.num_experts, c.num_experts_per_tok, c.num_hidden_layers, c.norm_topk_prob};
}

SyntheticRouting::SyntheticRouting(const RoutingSpec& spec, const RoutingShape& shape)
    : spec_(spec), shape_(shape) {
  static const std::pair<const char*, Kind> kKinds[] = {
      {"uniform", Kind::kUniform}, {"zipf", Kind::kZipf},     {"hotset", Kind::kHotset},
      {"drift", Kind::kDrift},     {"topics", Kind::kTopics}, {"replay", Kind::kReplay}};
  const int64_t E = shape.num_experts, k = shape.top_k;
  const std::string& where = spec.source;
  MOE_CHECK_AS("config", !spec.is_router(), "{}: routing 'router' needs no hook", where);
  MOE_CHECK_AS("config", E >= 1 && k >= 1 && k <= E && shape.num_layers >= 1,
               "{}: routing needs 1 <= top_k <= num_experts and layers (got {} experts, top-{}, {} "
               "layers)",
               where, E, k, shape.num_layers);
  const auto known = std::find_if(std::begin(kKinds), std::end(kKinds),
                                  [&](const auto& k) { return spec.kind == k.first; });
  MOE_CHECK_AS("config", known != std::end(kKinds), "{}: unknown routing kind '{}'", where,
               spec.kind);
  kind_ = known->second;

  if (spec.kind == "replay") {
    trace_ = read_trace(spec.trace);
    MOE_CHECK_AS(
        "trace",
        trace_.num_experts == E && trace_.top_k == k && trace_.num_layers == shape.num_layers,
        "{}: trace has {} experts, top_k {}, {} layers; the model has {}, {}, {}", spec.trace,
        trace_.num_experts, trace_.top_k, trace_.num_layers, E, k, shape.num_layers);
    trace_index_.assign(static_cast<size_t>(shape.num_layers), -1);
    for (size_t i = 0; i < trace_.layers.size(); ++i) {
      trace_index_[static_cast<size_t>(trace_.layers[i])] = static_cast<int64_t>(i);
    }
    return;
  }
  if (spec.kind == "hotset") {
    MOE_CHECK_AS("config", spec.hot_experts <= E, "{}: hot_experts {} exceeds the {} experts",
                 where, spec.hot_experts, E);
    MOE_CHECK_AS("config", spec.hot_share < 1 || spec.hot_experts >= k,
                 "{}: hot_share 1 with hot_experts {} < top_k {}: a token cannot pick {} distinct "
                 "experts",
                 where, spec.hot_experts, k, k);
    MOE_CHECK_AS("config", spec.hot_share > 0 || E - spec.hot_experts >= k,
                 "{}: hot_share 0 leaves {} experts for top_k {}", where, E - spec.hot_experts, k);
  }
  if (spec.kind == "topics") {
    MOE_CHECK_AS("config", spec.experts_per_topic <= E,
                 "{}: experts_per_topic {} exceeds the {} experts", where, spec.experts_per_topic,
                 E);
    MOE_CHECK_AS("config", spec.mix > 0 || spec.experts_per_topic >= k,
                 "{}: mix 0 with experts_per_topic {} < top_k {}: a token cannot pick {} distinct "
                 "experts",
                 where, spec.experts_per_topic, k, k);
  }
  perm_.resize(static_cast<size_t>(shape.num_layers));
  for (int64_t l = 0; l < shape.num_layers; ++l) {
    std::vector<int32_t>& p = perm_[static_cast<size_t>(l)];
    p.resize(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) p[static_cast<size_t>(e)] = static_cast<int32_t>(e);
    Rng rng(key_of(spec.seed, Tag::kPermutation, {l}));
    for (int64_t i = E - 1; i > 0; --i)
      std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(rng.below(i + 1))]);
  }
  if (spec.kind == "zipf" || spec.kind == "drift") {
    zipf_p_.resize(static_cast<size_t>(E));
    double sum = 0;
    for (int64_t i = 0; i < E; ++i)
      sum += zipf_p_[static_cast<size_t>(i)] = std::pow(i + 1.0, -spec.s);
    double acc = 0;
    zipf_cdf_.resize(static_cast<size_t>(E));
    for (int64_t i = 0; i < E; ++i) {
      zipf_p_[static_cast<size_t>(i)] /= sum;
      acc += zipf_p_[static_cast<size_t>(i)];
      zipf_cdf_[static_cast<size_t>(i)] = acc;
    }
    zipf_cdf_.back() = 1.0;
  }
}

void SyntheticRouting::route(int64_t step, int layer, std::span<const TokenId> tokens,
                             std::span<int32_t> ids, std::span<float> weights) {
  const size_t k = static_cast<size_t>(shape_.top_k);
  MOE_CHECK(ids.size() == tokens.size() * k && weights.size() == ids.size(),
            "routing hook: {} tokens but {} ids and {} weights for top-{}", tokens.size(),
            ids.size(), weights.size(), k);
  for (size_t t = 0; t < tokens.size(); ++t) {
    route_token(step, layer, tokens[t], ids.subspan(t * k, k), weights.subspan(t * k, k));
  }
}

void SyntheticRouting::route_token(int64_t step, int layer, TokenId token, std::span<int32_t> ids,
                                   std::span<float> weights) const {
  MOE_CHECK(layer >= 0 && layer < shape_.num_layers, "routing: layer {} outside 0..{}", layer,
            shape_.num_layers - 1);
  if (kind_ != Kind::kReplay) {
    sample(step, layer, token, ids, weights);
    return;
  }
  const int64_t index = trace_index_[static_cast<size_t>(layer)];
  MOE_CHECK_AS("trace", index >= 0, "{}: no routing for layer {} (tensor 'layers.{}.topk_ids')",
               spec_.trace, layer, layer);
  const int64_t row = replay_row(step, token);
  const int64_t rows = trace_.num_tokens(0);
  MOE_CHECK_AS("trace", row < rows,
               "{}: trace has {} token rows, but step {} sequence {} position {} needs row {} "
               "(record the trace from the same workload)",
               spec_.trace, rows, step, token.sequence, token.position, row);
  const size_t k = static_cast<size_t>(shape_.top_k);
  const auto& src = trace_.ids[static_cast<size_t>(index)];
  const auto& w = trace_.weights[static_cast<size_t>(index)];
  std::copy_n(src.begin() + row * static_cast<int64_t>(k), k, ids.begin());
  if (w.empty()) {
    std::fill(weights.begin(), weights.end(), 1.0f / static_cast<float>(k));
  } else {
    std::copy_n(w.begin() + row * static_cast<int64_t>(k), k, weights.begin());
  }
}

void SyntheticRouting::sample(int64_t step, int layer, TokenId token, std::span<int32_t> ids,
                              std::span<float> weights) const {
  const int64_t E = shape_.num_experts, k = shape_.top_k;
  const Kind kind = kind_;
  const std::vector<int32_t>& perm = perm_[static_cast<size_t>(layer)];
  int64_t offset = 0;  // drift: popularity rank i is permutation entry (i + offset) mod E
  if (kind == Kind::kDrift) offset = (spec_.shift * (step / spec_.period)) % E;
  int64_t topic = 0;
  const int64_t m = spec_.experts_per_topic;
  if (kind == Kind::kTopics) {
    Rng t(key_of(spec_.seed, Tag::kTopic, {step, token.sequence, token.position}));
    topic = t.below(spec_.topics);
  }
  const int64_t H = spec_.hot_experts;
  // Popularity of rank i for this token, and a draw from it.
  const auto prob = [&](int64_t i) -> double {
    if (kind == Kind::kZipf || kind == Kind::kDrift) return zipf_p_[static_cast<size_t>(i)];
    if (kind == Kind::kHotset) {
      if (H == E) return 1.0 / static_cast<double>(E);
      return i < H ? spec_.hot_share / static_cast<double>(H)
                   : (1.0 - spec_.hot_share) / static_cast<double>(E - H);
    }
    if (kind == Kind::kTopics) {
      const int64_t j = ((i - topic * m) % E + E) % E;
      return (j < m ? (1.0 - spec_.mix) / static_cast<double>(m) : 0.0) +
             spec_.mix / static_cast<double>(E);
    }
    return 1.0 / static_cast<double>(E);  // uniform
  };
  Rng rng(key_of(spec_.seed, Tag::kPicks, {step, layer, token.sequence, token.position}));
  const auto draw = [&]() -> int64_t {
    if (kind == Kind::kZipf || kind == Kind::kDrift) {
      const double u = rng.uniform();
      const auto it = std::upper_bound(zipf_cdf_.begin(), zipf_cdf_.end(), u);
      return std::min<int64_t>(it - zipf_cdf_.begin(), E - 1);
    }
    if (kind == Kind::kHotset) {
      if (H == E) return rng.below(E);
      return rng.uniform() < spec_.hot_share ? rng.below(H) : H + rng.below(E - H);
    }
    if (kind == Kind::kTopics) {
      if (rng.uniform() < spec_.mix) return rng.below(E);
      return (topic * m + rng.below(m)) % E;
    }
    return rng.below(E);
  };

  int64_t ranks[kMaxTopK];
  MOE_CHECK(k <= kMaxTopK, "routing: top_k {} above 256", k);
  pick_distinct(E, k, rng, prob, draw, spec_, ranks);
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += prob(ranks[j]);
  const double scale = shape_.normalise && sum > 0 ? 1.0 / sum : 1.0;
  for (int64_t j = 0; j < k; ++j) {
    ids[static_cast<size_t>(j)] = perm[static_cast<size_t>((ranks[j] + offset) % E)];
    weights[static_cast<size_t>(j)] = static_cast<float>(prob(ranks[j]) * scale);
  }
}

void SyntheticRouting::set_prompt_lengths(std::vector<int64_t> prompt_lengths) {
  prompt_offsets_.assign(1, 0);
  for (int64_t len : prompt_lengths) prompt_offsets_.push_back(prompt_offsets_.back() + len);
}

int64_t SyntheticRouting::replay_row(int64_t step, TokenId token) const {
  if (prompt_offsets_.empty()) return token.position;
  const int64_t S = static_cast<int64_t>(prompt_offsets_.size()) - 1;
  MOE_CHECK(token.sequence >= 0 && token.sequence < S, "replay: sequence {} outside 0..{}",
            token.sequence, S - 1);
  const size_t s = static_cast<size_t>(token.sequence);
  const int64_t len = prompt_offsets_[s + 1] - prompt_offsets_[s];
  if (step == 0) {
    MOE_CHECK(token.position < len, "replay: prefill position {} past prompt length {}",
              token.position, len);
    return prompt_offsets_[s] + token.position;
  }
  MOE_CHECK(token.position == len + step - 1,
            "replay: step {} of sequence {} is at position {}, expected {}", step, token.sequence,
            token.position, len + step - 1);
  return prompt_offsets_.back() + (step - 1) * S + token.sequence;
}

int64_t SyntheticRouting::rows_needed(int64_t steps) const {
  if (prompt_offsets_.empty() || steps < 1) return 0;
  const int64_t S = static_cast<int64_t>(prompt_offsets_.size()) - 1;
  return prompt_offsets_.back() + (steps - 1) * S;
}

int64_t SyntheticRouting::trace_rows() const {
  return trace_.layers.empty() ? 0 : trace_.num_tokens(0);
}

std::unique_ptr<SyntheticRouting> make_routing(const RoutingSpec& spec, const ModelConfig& config) {
  if (spec.is_router()) return nullptr;
  if (spec.kind == "replay") validate_trace(read_trace(spec.trace), config, spec.trace);
  return std::make_unique<SyntheticRouting>(spec, RoutingShape::of(config));
}

RoutingTrace generate_trace(const SyntheticRouting& routing, const std::vector<int64_t>& moe_layers,
                            int64_t num_tokens, int64_t tokens_per_step) {
  const RoutingShape& s = routing.shape();
  MOE_CHECK_AS("config", num_tokens >= 1, "generate_trace: num_tokens must be >= 1, got {}",
               num_tokens);
  RoutingTrace t;
  t.num_experts = s.num_experts;
  t.top_k = s.top_k;
  t.num_layers = s.num_layers;
  t.layers = moe_layers;
  const size_t k = static_cast<size_t>(s.top_k);
  for (int64_t layer : moe_layers) {
    std::vector<int32_t> ids(static_cast<size_t>(num_tokens) * k);
    std::vector<float> weights(ids.size());
    for (int64_t r = 0; r < num_tokens; ++r) {
      const int64_t step = tokens_per_step > 0 ? r / tokens_per_step : 0;
      routing.route_token(step, static_cast<int>(layer), TokenId{0, r},
                          std::span<int32_t>(ids).subspan(static_cast<size_t>(r) * k, k),
                          std::span<float>(weights).subspan(static_cast<size_t>(r) * k, k));
    }
    t.ids.push_back(std::move(ids));
    t.weights.push_back(std::move(weights));
  }
  return t;
}

RoutingTrace generate_trace(const RoutingSpec& spec, const ModelConfig& config, int64_t num_tokens,
                            int64_t tokens_per_step) {
  const auto routing = make_routing(spec, config);
  MOE_CHECK_AS(
      "config", routing != nullptr,
      "{}: routing 'router' needs the model's forward; a trace cannot be generated from it",
      spec.source);
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (config.layer_is_moe(l)) layers.push_back(l);
  }
  return generate_trace(*routing, layers, num_tokens, tokens_per_step);
}

}  // namespace moe::runtime
