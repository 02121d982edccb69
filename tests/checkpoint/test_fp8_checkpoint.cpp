// FP8 checkpoints through open_checkpoint: F8_E4M3 weights come with their `weight_scale_inv`
// blocks as stored; every bad FP8 input (missing scale, scale of the wrong shape or dtype, an F8
// tensor the config does not announce or excludes, e5m2) is one error naming file and tensor; and
// `--quantize fp8` of the bf16 fixture gives bit for bit the FP8 fixture's codes and scales.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/common/fp8.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "safetensors_writer.h"

namespace moe::testing {
namespace {

using namespace moe::runtime;
using ::testing::HasSubstr;

constexpr const char* kFp8Weight = "model.layers.0.self_attn.o_proj.weight";
constexpr const char* kFp8Scale = "model.layers.0.self_attn.o_proj.weight_scale_inv";
constexpr int64_t kFp8Rows = 130, kFp8Cols = 200;  // 2 x 2 blocks, the last ones partial

ModelConfig fp8_config() {
  ModelConfig c;
  c.num_experts = 4;
  c.quantization.fp8 = true;
  c.quantization.modules_to_not_convert = {"mlp.gate"};
  return c;
}

std::vector<uint8_t> fp8_codes(int64_t n) {
  std::vector<uint8_t> codes(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>((i * 37) % 0x7F);  // no NaN
  return codes;
}

TensorBytes fp8_scale_tensor(std::string dtype = "F32", std::vector<int64_t> shape = {2, 2}) {
  const std::vector<float> s = {0.5f, 0.25f, 2.0f, 0.125f};
  if (dtype == "BF16") {
    std::vector<bf16> b;
    for (float v : s) b.push_back(float_to_bf16(v));
    return {kFp8Scale, dtype, shape, bf16_bytes(b)};
  }
  if (dtype == "I32") return {kFp8Scale, dtype, shape, to_bytes(std::vector<int32_t>{1, 2, 3, 4})};
  return {kFp8Scale, dtype, shape, to_bytes(s)};
}

TensorBytes fp8_weight_tensor(std::string name = kFp8Weight, std::string dtype = "F8_E4M3") {
  return {std::move(name), std::move(dtype), {kFp8Rows, kFp8Cols}, fp8_codes(kFp8Rows * kFp8Cols)};
}

// read_e4m3 of kFp8Weight; the message of the checkpoint error it throws, "" if none.
std::string fp8_read_error(const ScratchDir& dir, const ModelConfig& config) {
  auto ckpt = open_checkpoint(dir.str(), config);
  std::vector<uint8_t> codes(static_cast<size_t>(kFp8Rows * kFp8Cols));
  std::vector<float> scales(4);
  return checkpoint_error([&] {
    ckpt->read_e4m3(kFp8Weight, std::vector<int64_t>{kFp8Rows, kFp8Cols}, codes, scales);
  });
}

TEST(Fp8Checkpoint, E4m3WeightAndItsBlockScalesAreReadAsStored) {
  for (const char* scale_dtype : {"F32", "BF16"}) {
    ScratchDir dir;
    write_safetensors(dir / "model.safetensors",
                      {fp8_weight_tensor(), fp8_scale_tensor(scale_dtype)});
    auto ckpt = open_checkpoint(dir.str(), fp8_config());
    EXPECT_EQ(ckpt->dtype(kFp8Weight), kernels::WeightDtype::kE4M3);
    std::vector<uint8_t> codes(static_cast<size_t>(kFp8Rows * kFp8Cols));
    std::vector<float> scales(4);
    ckpt->read_e4m3(kFp8Weight, std::vector<int64_t>{kFp8Rows, kFp8Cols}, codes, scales);
    EXPECT_EQ(codes, fp8_codes(kFp8Rows * kFp8Cols)) << scale_dtype;
    EXPECT_EQ(scales, (std::vector<float>{0.5f, 0.25f, 2.0f, 0.125f})) << scale_dtype;
    // Element (129, 199) lies in block (1, 1): code value x 0.125.
    EXPECT_EQ(kernels::e4m3_matrix_value(codes.data(), scales.data(), kFp8Cols, 129, 199),
              kernels::e4m3_to_float(codes[129 * kFp8Cols + 199]) * 0.125f);
  }
}

TEST(Fp8Checkpoint, MissingScaleNamesFileWeightAndTheScaleLookedFor) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors", {fp8_weight_tensor()});
  const std::string msg = fp8_read_error(dir, fp8_config());
  EXPECT_THAT(msg, HasSubstr((dir / "model.safetensors").string()));
  EXPECT_THAT(msg, HasSubstr("without its block scales"));
  EXPECT_THAT(msg, HasSubstr(std::string("no tensor '") + kFp8Scale + "'"));
  EXPECT_THAT(msg, HasSubstr(std::string("tensor '") + kFp8Weight + "'"));
}

TEST(Fp8Checkpoint, ScaleOfTheWrongShapeNamesBothShapes) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {fp8_weight_tensor(), fp8_scale_tensor("F32", {1, 4})});
  const std::string msg = fp8_read_error(dir, fp8_config());
  EXPECT_THAT(msg, HasSubstr(std::string("scale tensor '") + kFp8Scale + "' has shape [1, 4]"));
  EXPECT_THAT(msg, HasSubstr("expected [2, 2]"));
  EXPECT_THAT(msg, HasSubstr(std::string("tensor '") + kFp8Weight + "'"));
}

TEST(Fp8Checkpoint, ScaleOfAnotherDtypeIsAnError) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors", {fp8_weight_tensor(), fp8_scale_tensor("I32")});
  const std::string msg = fp8_read_error(dir, fp8_config());
  EXPECT_THAT(msg, HasSubstr("has dtype I32 (F32 or BF16 expected)"));
  EXPECT_THAT(msg, HasSubstr((dir / "model.safetensors").string()));
}

TEST(Fp8Checkpoint, E4m3TensorWithoutQuantizationConfigIsAnError) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors", {fp8_weight_tensor(), fp8_scale_tensor()});
  const std::string msg = fp8_read_error(dir, ModelConfig{});
  EXPECT_THAT(msg, HasSubstr("dtype F8_E4M3, but config.json announces no FP8 weights"));
  EXPECT_THAT(msg, HasSubstr((dir / "model.safetensors").string()));
  EXPECT_THAT(msg, HasSubstr(std::string("tensor '") + kFp8Weight + "'"));
}

TEST(Fp8Checkpoint, E4m3TensorOfAModuleNotConvertedIsAnError) {
  ScratchDir dir;
  const std::string router = "model.layers.0.mlp.gate.weight";
  write_safetensors(dir / "model.safetensors", {fp8_weight_tensor(router)});
  auto ckpt = open_checkpoint(dir.str(), fp8_config());
  const std::string msg = checkpoint_error([&] { ckpt->dtype(router); });
  EXPECT_THAT(msg, HasSubstr("does not make it FP8"));
  EXPECT_THAT(msg, HasSubstr("tensor '" + router + "'"));
}

TEST(Fp8Checkpoint, E5m2IsNotRead) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {fp8_weight_tensor(kFp8Weight, "F8_E5M2"), fp8_scale_tensor()});
  const std::string msg = fp8_read_error(dir, fp8_config());
  EXPECT_THAT(msg, HasSubstr("dtype F8_E5M2 is not read"));
  EXPECT_THAT(msg, HasSubstr(std::string("tensor '") + kFp8Weight + "'"));
}

// A fused F8 expert tensor whose expert parts do not align with its 128-row scale blocks: the up
// part of [E, 2 x 100, H] spans rows 100-199, two blocks, so it has no scale of its own.
TEST(Fp8Checkpoint, FusedExpertPartAcrossScaleBlocksIsAnError) {
  ScratchDir dir;
  const int64_t E = 2, I = 100, H = 64;
  const std::string fused = "model.layers.0.mlp.experts.gate_up_proj";
  write_safetensors(
      dir / "model.safetensors",
      {TensorBytes{fused, "F8_E4M3", {E, 2 * I, H}, fp8_codes(E * 2 * I * H)},
       TensorBytes{fused + "_scale_inv", "F32", {E, 2, 1}, to_bytes(std::vector<float>(4, 1.0f))}});
  auto ckpt = open_checkpoint(dir.str(), fp8_config());
  std::vector<uint8_t> codes(static_cast<size_t>(I * H));
  std::vector<float> scales(1);
  // gate (rows 0-99) lies in block 0: read with that block's scale.
  ckpt->read_e4m3("model.layers.0.mlp.experts.1.gate_proj.weight", std::vector<int64_t>{I, H},
                  codes, scales);
  EXPECT_EQ(scales[0], 1.0f);
  const std::string msg = checkpoint_error([&] {
    ckpt->read_e4m3("model.layers.0.mlp.experts.1.up_proj.weight", std::vector<int64_t>{I, H},
                    codes, scales);
  });
  EXPECT_THAT(msg, HasSubstr("crosses its 128 x 128 scale blocks"));
  EXPECT_THAT(msg, HasSubstr("tensor 'model.layers.0.mlp.experts.1.up_proj.weight'"));
  EXPECT_THAT(msg, HasSubstr((dir / "model.safetensors").string()));
}

// `--quantize fp8` (quantize_weights) of the bf16 moe128 fixture against the FP8 fixture written
// by tests/fixtures/make_fp8_fixtures.py from it: the same codes and scales, bit for bit.
TEST(Fp8Checkpoint, QuantizeFp8OfTheBf16FixtureEqualsTheFixtureWritersQuantiser) {
  const std::string root = std::string(MOE_SOURCE_DIR) + "/tests/fixtures/hf/";
  ModelConfig bf16_config = load_model_config(root + "moe128");
  const ModelConfig fp8 = load_model_config(root + "moe128_fp8");
  auto quantised = quantize_weights(open_checkpoint(root + "moe128", bf16_config),
                                    WeightQuantization::published_fp8());
  auto stored = open_checkpoint(root + "moe128_fp8", fp8);
  const int64_t H = fp8.hidden_size, I = fp8.moe_intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors = {
      {"model.layers.1.self_attn.q_proj.weight", {fp8.q_width(), H}},
      {"model.layers.1.self_attn.k_proj.weight", {fp8.kv_width(), H}},
      {"model.layers.0.self_attn.o_proj.weight", {H, fp8.q_width()}}};
  for (int e = 0; e < fp8.num_experts; e += 9) {
    const std::string p = "model.layers.0.mlp.experts." + std::to_string(e) + ".";
    tensors.push_back({p + "gate_proj.weight", {I, H}});
    tensors.push_back({p + "up_proj.weight", {I, H}});
    tensors.push_back({p + "down_proj.weight", {H, I}});
  }
  EXPECT_EQ(quantised->dtype("model.layers.0.mlp.gate.weight"), kernels::WeightDtype::kBF16);
  for (const auto& [name, shape] : tensors) {
    ASSERT_EQ(quantised->dtype(name), kernels::WeightDtype::kE4M3) << name;
    ASSERT_EQ(stored->dtype(name), kernels::WeightDtype::kE4M3) << name;
    const size_t n = static_cast<size_t>(shape[0] * shape[1]);
    const size_t ns = static_cast<size_t>(kernels::fp8_num_scales(shape[0], shape[1]));
    std::vector<uint8_t> codes_a(n), codes_b(n);
    std::vector<float> scales_a(ns), scales_b(ns);
    quantised->read_e4m3(name, shape, codes_a, scales_a);
    stored->read_e4m3(name, shape, codes_b, scales_b);
    EXPECT_EQ(codes_a, codes_b) << name;
    EXPECT_EQ(to_bytes(scales_a), to_bytes(scales_b)) << name;  // bit for bit
  }
}

}  // namespace
}  // namespace moe::testing
