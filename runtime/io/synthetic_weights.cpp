// Synthetic weights: element i of tensor `name` is a pure function of (seed, name, i), so every
// rank builds exactly the tensors it owns with no communication, whatever the world size. Tensors
// the config's quantization_config makes FP8 are those values quantised (WeightSource's default
// read_e4m3).
// Scales keep activations well-conditioned through any depth (see scale_for).
#include <algorithm>
#include <cmath>
#include <string_view>
#include <thread>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/common/hash.h"
#include "kernels/cpu/host.h"
#include "runtime/io/weights.h"

namespace moe::runtime {
namespace {

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Uniform(-1, 1) has variance 1/3: a linear layer with a = gain/sqrt(in) scales the variance of
// its input by gain^2/3. sqrt(3) keeps it; residual-branch outputs (o_proj, down_proj) use less
// so the residual stream grows slowly; the router and lm_head get more spread so routing is
// decisive and logits are not flat.
struct Scale {
  float offset = 0.0f;
  float amplitude = 1.0f;
};

Scale scale_for(std::string_view name, std::span<const int64_t> shape) {
  if (ends_with(name, "norm.weight")) return {1.0f, 0.1f};
  if (ends_with(name, "embed_tokens.weight")) return {0.0f, 1.0f};
  const float in = static_cast<float>(shape.size() >= 2 ? shape[shape.size() - 1] : 1);
  float gain = std::sqrt(3.0f);
  if (ends_with(name, "o_proj.weight") || ends_with(name, "down_proj.weight")) gain = 1.0f;
  if (ends_with(name, "mlp.gate.weight")) gain = 4.0f;
  if (ends_with(name, "lm_head.weight")) gain = 4.0f;
  return {0.0f, gain / std::sqrt(in)};
}

class SyntheticWeights final : public WeightSource {
 public:
  SyntheticWeights(const ModelConfig& config, uint64_t seed) : config_(config), seed_(seed) {}

  void read(const std::string& name, std::span<const int64_t> shape, std::span<bf16> dst) override {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    MOE_CHECK_AS("weights", static_cast<int64_t>(dst.size()) == numel,
                 "synthetic tensor '{}': destination holds {} elements, shape needs {}", name,
                 dst.size(), numel);
    const Scale s = scale_for(name, shape);
    const uint64_t key = splitmix64(seed_ ^ fnv1a(name));
    auto fill = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const uint64_t r = splitmix64(key + static_cast<uint64_t>(i));
        // 24 random bits -> uniform in [-1, 1).
        const float u = static_cast<float>(r >> 40) * (2.0f / 16777216.0f) - 1.0f;
        dst[i] = float_to_bf16(s.offset + s.amplitude * u);
      }
    };
    // Elements are independent, so large tensors are filled by every core of the machine,
    // whatever the BLAS thread setting: the 61 GB of Qwen3-30B-A3B in seconds, not minutes.
    constexpr int64_t kMinChunk = int64_t{1} << 16;
    const int64_t workers = std::min<int64_t>(static_cast<int64_t>(kernels::usable_cores()),
                                              (numel + kMinChunk - 1) / kMinChunk);
    if (workers <= 1) {
      fill(0, numel);
    } else {
      std::vector<std::jthread> pool;
      for (int64_t w = 0; w < workers; ++w) {
        pool.emplace_back(fill, numel * w / workers, numel * (w + 1) / workers);
      }
    }
    ++stats_.tensors_read;
  }
  // e4m3 (the bf16 values above, quantised) where the config's quantization_config says so.
  kernels::WeightDtype dtype(const std::string& name) override {
    return config_.quantization.quantizes(name) ? kernels::WeightDtype::kE4M3
                                                : kernels::WeightDtype::kBF16;
  }
  bool contains(const std::string& name) const override {
    // Tied models have no lm_head tensor; everything else exists.
    return !(config_.tie_word_embeddings && name == "lm_head.weight");
  }
  LoadStats stats() const override { return stats_; }
  std::string describe() const override { return fmt::format("synthetic (seed {})", seed_); }

 private:
  ModelConfig config_;
  uint64_t seed_;
  LoadStats stats_;
};

}  // namespace

std::unique_ptr<WeightSource> make_synthetic_weights(const ModelConfig& config, uint64_t seed) {
  return std::make_unique<SyntheticWeights>(config, seed);
}

}  // namespace moe::runtime
