// WeightSource: where tensors come from. The model asks by HF tensor name with the shape it
// expects, and only for tensors its rank holds (its expert slots + the dense replica); a tensor
// comes as bf16 or, when dtype() says so, as e4m3 codes with 128 x 128 block scales.
// Implementations: synthetic (deterministic in seed + name, independent of rank count; e4m3 where
// the config's quantization_config makes a tensor FP8), safetensors (an HF checkpoint directory;
// maps per-expert names onto fused layouts; FP8 checkpoints as published), and the `--quantize
// fp8` wrapper around either.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/op_args.h"
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
  // The element type tensor `name` comes in: kE4M3 (read it with read_e4m3) or kBF16 (read).
  // Throws moe::Error naming file and tensor when it is stored in a form the config does not
  // announce. Default: kBF16.
  virtual kernels::WeightDtype dtype(const std::string& name);
  // A 2-D tensor of shape {rows, cols} whose dtype() is kE4M3: codes [rows * cols] and scales
  // [ceil(rows / 128) * ceil(cols / 128)] (kernels/common/fp8.h). Default: read() as bf16, then
  // quantise_e4m3 (sources that hold bf16 values).
  virtual void read_e4m3(const std::string& name, std::span<const int64_t> shape,
                         std::span<uint8_t> codes, std::span<float> scales);
  virtual bool contains(const std::string& name) const = 0;
  virtual LoadStats stats() const = 0;
  virtual std::string describe() const = 0;
};

// Every element is a function of (seed, name, index) only. Scales keep activations sane:
// norm weights near 1, linear weights ~ U(-a, a) with a = gain / sqrt(in_features).
std::unique_ptr<WeightSource> make_synthetic_weights(const ModelConfig& config, uint64_t seed);

// HF checkpoint directory (config.json, model.safetensors[.index.json] or shards).
std::unique_ptr<WeightSource> open_checkpoint(const std::string& dir, const ModelConfig& config);

// `--quantize fp8`: `source` with every bf16 tensor that `quantization` makes FP8 handed out as
// e4m3 (quantise_e4m3), e4m3 tensors passed through.
std::unique_ptr<WeightSource> quantize_weights(std::unique_ptr<WeightSource> source,
                                               const WeightQuantization& quantization);

// A [rows, cols] matrix quantised in 128 x 128 blocks (fp8.h's e4m3_quantise_block): scale =
// block amax / 448, code = e4m3(value / scale). tests/fixtures/make_fp8_fixtures.py quantises the
// same way, bit for bit.
void quantise_e4m3(std::span<const bf16> values, int64_t rows, int64_t cols,
                   std::span<uint8_t> codes, std::span<float> scales);

}  // namespace moe::runtime
