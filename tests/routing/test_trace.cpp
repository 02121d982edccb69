// Routing trace files: write/read round trip bit for bit, and one clear error (naming the file
// and the problem) for each bad file: missing metadata or tensor, wrong dtype, shapes that do not
// agree, ids out of range or repeated, an empty trace, a trace that does not match the model.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "runtime/io/config.h"
#include "runtime/io/trace.h"
#include "tests/checkpoint/safetensors_writer.h"
#include "tests/common/expect_error.h"

namespace moe::runtime {
namespace {

using moe::testing::ScratchDir;
using moe::testing::TensorBytes;
using moe::testing::to_bytes;

RoutingTrace small_trace() {
  RoutingTrace t;
  t.num_experts = 8;
  t.top_k = 2;
  t.num_layers = 3;
  t.layers = {0, 2};
  t.ids = {{0, 1, 7, 3, 5, 4}, {2, 6, 1, 0, 3, 7}};
  t.weights = {{0.75f, 0.25f, 0.5f, 0.5f, 0.123456789f, 1.0f - 0.123456789f}, {}};
  return t;
}

std::string trace_error(const std::string& path) {
  return test::expect_error(
      "trace", [&] { read_trace(path); }, test::ErrorText::kMessage);
}

TEST(Trace, WriteThenReadIsBitForBit) {
  ScratchDir dir;
  const RoutingTrace t = small_trace();
  const std::string path = (dir / "t.safetensors").string();
  write_trace(path, t);
  const RoutingTrace r = read_trace(path);
  EXPECT_EQ(r.num_experts, 8);
  EXPECT_EQ(r.top_k, 2);
  EXPECT_EQ(r.num_layers, 3);
  EXPECT_EQ(r.layers, t.layers);
  EXPECT_EQ(r.ids, t.ids);
  ASSERT_EQ(r.weights.size(), 2u);
  ASSERT_EQ(r.weights[0].size(), t.weights[0].size());
  EXPECT_EQ(std::memcmp(r.weights[0].data(), t.weights[0].data(), t.weights[0].size() * 4), 0);
  EXPECT_TRUE(r.weights[1].empty());
  EXPECT_EQ(r.num_tokens(0), 3);
}

// The file a script would write: tensors and metadata by hand.
void write_custom(const std::string& path, const std::vector<TensorBytes>& tensors,
                  nlohmann::json metadata = {
                      {"num_experts", "8"}, {"top_k", "2"}, {"num_layers", "1"}}) {
  moe::testing::write_safetensors(path, tensors, metadata);
}

TEST(Trace, HandWrittenFileReads) {
  ScratchDir dir;
  const std::string path = (dir / "t.safetensors").string();
  write_custom(path,
               {{"layers.0.topk_ids", "I32", {2, 2}, to_bytes(std::vector<int32_t>{1, 2, 3, 4})}});
  const RoutingTrace r = read_trace(path);
  EXPECT_EQ(r.ids[0], (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_TRUE(r.weights[0].empty());
}

struct BadCase {
  const char* name;
  std::vector<TensorBytes> tensors;
  nlohmann::json metadata;
  const char* expected;
};

TEST(Trace, EachBadFileGetsOneClearError) {
  const nlohmann::json meta = {{"num_experts", "8"}, {"top_k", "2"}, {"num_layers", "2"}};
  const auto ids = [](std::vector<int32_t> v, int64_t rows) {
    return TensorBytes{"layers.0.topk_ids", "I32", {rows, 2}, to_bytes(v)};
  };
  const std::vector<BadCase> cases = {
      {"missing_metadata",
       {ids({0, 1}, 1)},
       {{"num_experts", "8"}, {"num_layers", "2"}},
       "metadata key 'top_k' is missing"},
      {"bad_metadata",
       {ids({0, 1}, 1)},
       {{"num_experts", "x"}, {"top_k", "2"}, {"num_layers", "2"}},
       "metadata 'num_experts' is 'x'"},
      {"wrong_ids_dtype",
       {{"layers.0.topk_ids", "I64", {1, 2}, to_bytes(std::vector<int64_t>{0, 1})}},
       meta,
       "tensor 'layers.0.topk_ids' is I64, expected I32"},
      {"wrong_weights_dtype",
       {ids({0, 1}, 1),
        {"layers.0.topk_weights", "F64", {1, 2}, to_bytes(std::vector<double>{.5, .5})}},
       meta,
       "tensor 'layers.0.topk_weights' is F64, expected F32"},
      {"wrong_width",
       {{"layers.0.topk_ids", "I32", {1, 3}, to_bytes(std::vector<int32_t>{0, 1, 2})}},
       meta,
       "has shape [1, 3], expected [tokens, top_k=2]"},
      {"weights_without_ids",
       {ids({0, 1}, 1),
        {"layers.1.topk_weights", "F32", {1, 2}, to_bytes(std::vector<float>{.5f, .5f})}},
       meta,
       "tensor 'layers.1.topk_weights' has no 'layers.1.topk_ids'"},
      {"token_counts_differ",
       {ids({0, 1}, 1),
        {"layers.1.topk_ids", "I32", {2, 2}, to_bytes(std::vector<int32_t>{0, 1, 2, 3})}},
       meta,
       "has 2 tokens but 'layers.0.topk_ids' has 1"},
      {"layer_out_of_range",
       {{"layers.5.topk_ids", "I32", {1, 2}, to_bytes(std::vector<int32_t>{0, 1})}},
       meta,
       "layer 5 is outside 0..1"},
      {"unexpected_tensor",
       {ids({0, 1}, 1), {"router", "I32", {1}, to_bytes(std::vector<int32_t>{0})}},
       meta,
       "unexpected tensor 'router'"},
      {"id_out_of_range",
       {ids({0, 1, 2, 8}, 2)},
       meta,
       "layer 0 token 1: expert id 8 is outside 0..7"},
      {"negative_id", {ids({-1, 1}, 1)}, meta, "expert id -1 is outside 0..7"},
      {"repeated_id", {ids({0, 1, 3, 3}, 2)}, meta, "layer 0 token 1: expert 3 appears twice"},
      {"no_layers", {}, meta, "empty trace: no layers.{l}.topk_ids tensor"},
      {"no_tokens", {ids({}, 0)}, meta, "empty trace: 0 tokens"},
  };
  ScratchDir dir;
  for (const BadCase& c : cases) {
    const std::string path = (dir / (std::string(c.name) + ".safetensors")).string();
    write_custom(path, c.tensors, c.metadata);
    const std::string msg = trace_error(path);
    EXPECT_NE(msg.find(c.expected), std::string::npos) << c.name << ": " << msg;
    EXPECT_EQ(msg.rfind(path, 0), 0u) << c.name << ": message must start with the file: " << msg;
  }
}

TEST(Trace, NotASafetensorsFileIsACheckpointError) {
  ScratchDir dir;
  const std::string path = (dir / "junk.safetensors").string();
  moe::testing::write_file_bytes(path, {1, 2, 3});
  const std::string msg = test::expect_error(
      "checkpoint", [&] { read_trace(path); }, test::ErrorText::kMessage);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

ModelConfig model_with(int64_t experts, int64_t top_k, int64_t layers) {
  ModelConfig c;
  c.name = "m";
  c.num_experts = experts;
  c.num_experts_per_tok = top_k;
  c.num_hidden_layers = layers;
  return c;
}

TEST(Trace, ValidateAgainstTheModel) {
  RoutingTrace t = small_trace();  // 8 experts, top-2, layers {0, 2} of 3
  ModelConfig ok = model_with(8, 2, 3);
  ok.mlp_only_layers = {1};
  EXPECT_NO_THROW(validate_trace(t, ok, "t"));
  const auto error = [&](const ModelConfig& c) {
    return test::expect_error(
        "trace", [&] { validate_trace(t, c, "t.st"); }, test::ErrorText::kMessage);
  };
  ModelConfig more_experts = ok;
  more_experts.num_experts = 16;
  EXPECT_NE(error(more_experts).find("t.st: trace has 8 experts, model 'm' has 16"),
            std::string::npos);
  ModelConfig top4 = ok;
  top4.num_experts_per_tok = 4;
  EXPECT_NE(error(top4).find("trace has top_k 2"), std::string::npos);
  ModelConfig four_layers = ok;
  four_layers.num_hidden_layers = 4;
  EXPECT_NE(error(four_layers).find("trace has 3 layers, model 'm' has 4"), std::string::npos);
  ModelConfig all_moe = model_with(8, 2, 3);
  EXPECT_NE(error(all_moe).find("no routing for MoE layer 1"), std::string::npos);
  ModelConfig dense2 = ok;
  dense2.mlp_only_layers = {1, 2};
  EXPECT_NE(error(dense2).find("layer 2 is not a MoE layer"), std::string::npos);
}

TEST(Trace, WriteRefusesAnInconsistentTrace) {
  RoutingTrace t = small_trace();
  t.ids[1].pop_back();
  ScratchDir dir;
  const std::string msg = test::expect_error(
      "trace", [&] { write_trace((dir / "x").string(), t); }, test::ErrorText::kMessage);
  EXPECT_NE(msg.find("layer 2 has 5 ids"), std::string::npos) << msg;
}

}  // namespace
}  // namespace moe::runtime
