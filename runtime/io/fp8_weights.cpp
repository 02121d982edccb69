// FP8 weights from bf16 values: WeightSource's default read_e4m3 (quantise what read() gives),
// the `--quantize fp8` wrapper, and the block quantiser both use.
#include <vector>

#include "kernels/common/check.h"
#include "kernels/common/fp8.h"
#include "runtime/io/weights.h"

namespace moe::runtime {
namespace {

int64_t two_d_numel(const std::string& name, std::span<const int64_t> shape) {
  MOE_CHECK_AS("weights", shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0,
               "tensor '{}': e4m3 weights are 2-D matrices, asked for {} dimensions", name,
               shape.size());
  return shape[0] * shape[1];
}

// Wraps a source; bf16 tensors that `quantization` makes FP8 come out as e4m3.
class QuantizedWeights final : public WeightSource {
 public:
  QuantizedWeights(std::unique_ptr<WeightSource> inner, WeightQuantization quantization)
      : inner_(std::move(inner)), quantization_(std::move(quantization)) {}

  void read(const std::string& name, std::span<const int64_t> shape, std::span<bf16> dst) override {
    inner_->read(name, shape, dst);
  }
  kernels::WeightDtype dtype(const std::string& name) override {
    const kernels::WeightDtype stored = inner_->dtype(name);
    return stored == kernels::WeightDtype::kBF16 && quantization_.quantizes(name)
               ? kernels::WeightDtype::kE4M3
               : stored;
  }
  void read_e4m3(const std::string& name, std::span<const int64_t> shape, std::span<uint8_t> codes,
                 std::span<float> scales) override {
    if (inner_->dtype(name) == kernels::WeightDtype::kE4M3) {
      inner_->read_e4m3(name, shape, codes, scales);
    } else {
      WeightSource::read_e4m3(name, shape, codes, scales);
    }
  }
  bool contains(const std::string& name) const override { return inner_->contains(name); }
  LoadStats stats() const override { return inner_->stats(); }
  std::string describe() const override {
    return inner_->describe() + ", bf16 weights quantised to FP8 at load (--quantize fp8)";
  }

 private:
  std::unique_ptr<WeightSource> inner_;
  WeightQuantization quantization_;
};

}  // namespace

kernels::WeightDtype WeightSource::dtype(const std::string& /*name*/) {
  return kernels::WeightDtype::kBF16;
}

void WeightSource::read_e4m3(const std::string& name, std::span<const int64_t> shape,
                             std::span<uint8_t> codes, std::span<float> scales) {
  std::vector<bf16> values(static_cast<size_t>(two_d_numel(name, shape)));
  read(name, shape, values);
  quantise_e4m3(values, shape[0], shape[1], codes, scales);
}

void quantise_e4m3(std::span<const bf16> values, int64_t rows, int64_t cols,
                   std::span<uint8_t> codes, std::span<float> scales) {
  MOE_CHECK_AS("weights",
               static_cast<int64_t>(values.size()) == rows * cols &&
                   static_cast<int64_t>(codes.size()) == rows * cols &&
                   static_cast<int64_t>(scales.size()) == kernels::fp8_num_scales(rows, cols),
               "quantise_e4m3: [{}, {}] needs {} values and codes and {} scales, got {}, {}, {}",
               rows, cols, rows * cols, kernels::fp8_num_scales(rows, cols), values.size(),
               codes.size(), scales.size());
  std::vector<float> w(values.size());
  for (size_t i = 0; i < values.size(); ++i) w[i] = bf16_to_float(values[i]);
  for (int64_t br = 0; br < kernels::fp8_num_blocks(rows); ++br) {
    for (int64_t bc = 0; bc < kernels::fp8_num_blocks(cols); ++bc) {
      kernels::e4m3_quantise_block(w.data(), rows, cols, br, bc, codes.data(), scales.data());
    }
  }
}

std::unique_ptr<WeightSource> quantize_weights(std::unique_ptr<WeightSource> source,
                                               const WeightQuantization& quantization) {
  return std::make_unique<QuantizedWeights>(std::move(source), quantization);
}

}  // namespace moe::runtime
