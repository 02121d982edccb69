// WeightSource: where tensors come from. The model asks by HF tensor name with the shape it
// expects, and only for tensors its rank holds (its expert slots + the dense replica).
// Implementations: synthetic (deterministic in seed + name, independent of rank count) and
// safetensors (an HF checkpoint directory; maps per-expert names onto fused layouts).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/common/bf16.h"
#include "runtime/io/config.h"

namespace moe::runtime {

struct LoadStats {
  int64_t tensors_read = 0;
  int64_t bytes_read = 0;  // bytes of checkpoint data touched (0 for synthetic)
  int64_t files_opened = 0;
  double seconds = 0.0;
  // Checkpoints only, and only when the environment sets MOE_EP_TRACE_READS=1: one
  // "file:tensor" entry per read ("file:tensor[expert E, gate|up|down]" for a fused slice), so
  // tests can see exactly what a rank touched.
  std::vector<std::string> tensors_touched;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // Fills dst (bf16, product(shape) elements) with tensor `name`. Throws moe::Error naming the
  // tensor when it is missing, has another shape, or its data is bad.
  virtual void read(const std::string& name, std::span<const int64_t> shape,
                    std::span<bf16> dst) = 0;
  virtual bool contains(const std::string& name) const = 0;
  virtual LoadStats stats() const = 0;
  virtual std::string describe() const = 0;
};

// Every element is a function of (seed, name, index) only. Scales keep activations sane:
// norm weights near 1, linear weights ~ U(-a, a) with a = gain / sqrt(in_features).
std::unique_ptr<WeightSource> make_synthetic_weights(const ModelConfig& config, uint64_t seed);

// HF checkpoint directory (config.json, model.safetensors[.index.json] or shards).
std::unique_ptr<WeightSource> open_checkpoint(const std::string& dir, const ModelConfig& config);

}  // namespace moe::runtime
