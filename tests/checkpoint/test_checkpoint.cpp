// Checkpoint directories through open_checkpoint: dtype conversion with exact bf16 results,
// index.json with a layer spanning two shards, lazy per-shard opening with exact byte counts,
// the three expert layouts giving identical per-expert tensors, and bad checkpoints.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <tuple>

#include "runtime/io/safetensors.h"
#include "runtime/io/weights.h"
#include "safetensors_writer.h"

namespace moe::testing {  // where the safetensors_writer.h helpers live
namespace {

using namespace moe::runtime;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

ModelConfig tiny_config(int64_t num_experts = 4) {
  ModelConfig c;
  c.num_experts = num_experts;
  return c;
}

std::vector<uint16_t> bits_of(const std::vector<bf16>& v) {
  std::vector<uint16_t> out;
  for (bf16 x : v) out.push_back(x.bits);
  return out;
}

std::vector<bf16> read_all(WeightSource& w, const std::string& name, std::vector<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<bf16> out(static_cast<size_t>(n));
  w.read(name, shape, out);
  return out;
}

// Turns read tracing on for one test (LoadStats::tensors_touched).
class TraceReads {
 public:
  TraceReads() { ::setenv("MOE_EP_TRACE_READS", "1", 1); }
  ~TraceReads() { ::unsetenv("MOE_EP_TRACE_READS"); }
};

// --- dtypes ---

TEST(CheckpointDtypes, Bf16TensorIsCopiedBitForBit) {
  ScratchDir dir;
  std::vector<bf16> v = random_bf16(24, 7);
  v[0].bits = 0x7fc1;  // a NaN payload and signed zero survive a plain copy
  v[1].bits = 0x8000;
  write_safetensors(dir / "model.safetensors", {TensorBytes{"w", "BF16", {4, 6}, bf16_bytes(v)}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_EQ(bits_of(read_all(*ckpt, "w", {4, 6})), bits_of(v));
  const LoadStats s = ckpt->stats();
  EXPECT_EQ(s.tensors_read, 1);
  EXPECT_EQ(s.bytes_read, 48);
  EXPECT_EQ(s.files_opened, 1);
}

TEST(CheckpointDtypes, F32IsRoundedToNearestEvenBf16) {
  // float bits -> bf16 bits, worked out by hand (bf16 keeps the top 16 bits).
  const std::vector<std::pair<uint32_t, uint16_t>> cases = {
      {0x3F800000, 0x3F80},  // 1.0
      {0x3F808000, 0x3F80},  // 1 + 2^-8: tie, 0x3F80 is even
      {0x3F818000, 0x3F82},  // tie between odd 0x3F81 and even 0x3F82
      {0x3F808001, 0x3F81},  // just above the tie
      {0x3F807FFF, 0x3F80},  // just below the tie
      {0xC0200000, 0xC020},  // -2.5
      {0x80000000, 0x8000},  // -0
      {0x00008000, 0x0000},  // subnormal tie rounds to even zero
      {0x00018000, 0x0002},  // subnormal tie rounds up to even
      {0x7F7FFFFF, 0x7F80},  // FLT_MAX rounds to +inf
      {0x7F800000, 0x7F80},  // +inf
      {0xFF800000, 0xFF80},  // -inf
      {0x7FC00000, 0x7FC0},  // quiet NaN
      {0x7F800001, 0x7FC0},  // NaN whose payload is only in the low bits stays NaN
  };
  std::vector<uint32_t> in;
  std::vector<uint16_t> want;
  for (const auto& [f, b] : cases) {
    in.push_back(f);
    want.push_back(b);
  }
  ScratchDir dir;
  const int64_t n = static_cast<int64_t>(in.size());
  write_safetensors(dir / "model.safetensors", {TensorBytes{"w", "F32", {n}, to_bytes(in)}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_EQ(bits_of(read_all(*ckpt, "w", {n})), want);
  EXPECT_EQ(ckpt->stats().bytes_read, 4 * n);
}

TEST(CheckpointDtypes, F16IsConvertedToNearestEvenBf16) {
  // half bits -> bf16 bits, worked out by hand.
  const std::vector<std::pair<uint16_t, uint16_t>> cases = {
      {0x3C00, 0x3F80},  // 1.0
      {0x3C04, 0x3F80},  // 1 + 2^-8: tie to even
      {0x3C0C, 0x3F82},  // 1 + 3*2^-8: tie to even (up)
      {0x3C05, 0x3F81},  // 1 + 2^-8 + 2^-10: above the tie
      {0x7BFF, 0x4780},  // 65504 rounds to 65536
      {0x0001, 0x3380},  // smallest subnormal half, 2^-24, is exact in bf16
      {0x03FF, 0x3880},  // largest subnormal half (1023 * 2^-24) rounds up to 2^-14
      {0xC000, 0xC000},  // -2
      {0x8000, 0x8000},  // -0
      {0x7C00, 0x7F80},  // +inf
      {0xFC00, 0xFF80},  // -inf
      {0x7E00, 0x7FC0},  // NaN
  };
  std::vector<uint16_t> in, want;
  for (const auto& [h, b] : cases) {
    in.push_back(h);
    want.push_back(b);
  }
  ScratchDir dir;
  const int64_t n = static_cast<int64_t>(in.size());
  write_safetensors(dir / "model.safetensors", {TensorBytes{"w", "F16", {n}, to_bytes(in)}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_EQ(bits_of(read_all(*ckpt, "w", {n})), want);
  EXPECT_EQ(ckpt->stats().bytes_read, 2 * n);
}

TEST(CheckpointDtypes, EmptyTensorReadsZeroBytes) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {TensorBytes{"e", "BF16", {0, 4}, {}},
                     TensorBytes{"w", "BF16", {2}, bf16_bytes(random_bf16(2, 1))}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  std::vector<bf16> none;
  ckpt->read("e", std::vector<int64_t>{0, 4}, none);
  EXPECT_EQ(ckpt->stats().tensors_read, 1);
  EXPECT_EQ(ckpt->stats().bytes_read, 0);
}

TEST(CheckpointDtypes, UnconvertibleDtypeNamesTensorAndDtype) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {TensorBytes{"ids", "I32", {2}, to_bytes(std::vector<int32_t>{1, 2})}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  std::vector<bf16> dst(2);
  const std::string msg =
      checkpoint_error([&] { ckpt->read("ids", std::vector<int64_t>{2}, dst); });
  EXPECT_THAT(msg, HasSubstr("dtype I32 cannot be loaded as bf16"));
  EXPECT_THAT(msg, HasSubstr("tensor 'ids'"));
}

// --- directories, index and lazy opening ---

// Layer 0 split across two shards the way HF sharding does it: its attention in shard 1, its
// norms and router in shard 2; embeddings in shard 1, final norm in shard 2.
struct ShardedFixture {
  std::map<std::string, std::vector<bf16>> values;
  std::map<std::string, std::vector<int64_t>> shapes;
  std::map<std::string, std::string> file_of;

  explicit ShardedFixture(const ScratchDir& dir, bool with_index) {
    const std::vector<std::tuple<std::string, std::vector<int64_t>, std::string>> spec = {
        {"model.embed_tokens.weight", {16, 8}, "model-00001-of-00002.safetensors"},
        {"model.layers.0.self_attn.q_proj.weight", {8, 8}, "model-00001-of-00002.safetensors"},
        {"model.layers.0.self_attn.k_proj.weight", {4, 8}, "model-00001-of-00002.safetensors"},
        {"model.layers.0.input_layernorm.weight", {8}, "model-00002-of-00002.safetensors"},
        {"model.layers.0.mlp.gate.weight", {4, 8}, "model-00002-of-00002.safetensors"},
        {"model.norm.weight", {8}, "model-00002-of-00002.safetensors"},
    };
    std::map<std::string, std::vector<TensorBytes>> per_file;
    std::vector<std::pair<std::string, std::string>> weight_map;
    uint32_t seed = 100;
    for (const auto& [name, shape, file] : spec) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      values[name] = random_bf16(static_cast<size_t>(n), seed++);
      shapes[name] = shape;
      file_of[name] = file;
      per_file[file].push_back(TensorBytes{name, "BF16", shape, bf16_bytes(values[name])});
      weight_map.emplace_back(name, file);
    }
    for (const auto& [file, tensors] : per_file) write_safetensors(dir / file, tensors);
    if (with_index) write_index(dir.path(), weight_map);
  }
  int64_t bytes(const std::string& name) const {
    return static_cast<int64_t>(values.at(name).size() * 2);
  }
};

TEST(CheckpointIndex, LayerSpanningTwoFilesReadsThroughIndex) {
  ScratchDir dir;
  ShardedFixture fx(dir, /*with_index=*/true);
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  int64_t bytes = 0;
  for (const auto& [name, v] : fx.values) {
    EXPECT_TRUE(ckpt->contains(name)) << name;
    EXPECT_EQ(bits_of(read_all(*ckpt, name, fx.shapes[name])), bits_of(v)) << name;
    bytes += fx.bytes(name);
  }
  EXPECT_FALSE(ckpt->contains("lm_head.weight"));
  const LoadStats s = ckpt->stats();
  EXPECT_EQ(s.files_opened, 2);
  EXPECT_EQ(s.tensors_read, static_cast<int64_t>(fx.values.size()));
  EXPECT_EQ(s.bytes_read, bytes);
  EXPECT_THAT(ckpt->describe(), HasSubstr("via index"));
}

TEST(CheckpointIndex, OpensOnlyTheShardsOfTheTensorsRead) {
  TraceReads trace;
  ScratchDir dir;
  ShardedFixture fx(dir, /*with_index=*/true);
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_EQ(ckpt->stats().files_opened, 0);  // opening the directory maps nothing

  const std::string a = "model.layers.0.mlp.gate.weight", b = "model.norm.weight";
  read_all(*ckpt, a, fx.shapes[a]);
  read_all(*ckpt, b, fx.shapes[b]);
  LoadStats s = ckpt->stats();
  EXPECT_EQ(s.files_opened, 1);
  EXPECT_EQ(s.bytes_read, fx.bytes(a) + fx.bytes(b));
  EXPECT_THAT(s.tensors_touched, ElementsAre("model-00002-of-00002.safetensors:" + a,
                                             "model-00002-of-00002.safetensors:" + b));

  const std::string c = "model.layers.0.self_attn.k_proj.weight";
  read_all(*ckpt, c, fx.shapes[c]);
  s = ckpt->stats();
  EXPECT_EQ(s.files_opened, 2);
  EXPECT_EQ(s.bytes_read, fx.bytes(a) + fx.bytes(b) + fx.bytes(c));
  EXPECT_EQ(s.tensors_touched.back(), "model-00001-of-00002.safetensors:" + c);
}

TEST(CheckpointIndex, TracingIsOffByDefault) {
  ScratchDir dir;
  ShardedFixture fx(dir, /*with_index=*/true);
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  read_all(*ckpt, "model.norm.weight", {8});
  EXPECT_TRUE(ckpt->stats().tensors_touched.empty());
}

TEST(CheckpointIndex, ShardsWithoutIndexAreFoundByTheirHeaders) {
  ScratchDir dir;
  ShardedFixture fx(dir, /*with_index=*/false);
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_EQ(ckpt->stats().files_opened, 0);
  const std::string name = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_TRUE(ckpt->contains("model.norm.weight"));
  EXPECT_EQ(bits_of(read_all(*ckpt, name, fx.shapes[name])), bits_of(fx.values[name]));
  EXPECT_EQ(ckpt->stats().files_opened, 1);
  EXPECT_EQ(ckpt->stats().bytes_read, fx.bytes(name));
}

TEST(CheckpointIndex, SameTensorInTwoShardsWithoutIndexIsAnError) {
  ScratchDir dir;
  const auto v = bf16_bytes(random_bf16(4, 1));
  write_safetensors(dir / "a.safetensors", {TensorBytes{"w", "BF16", {4}, v}});
  write_safetensors(dir / "b.safetensors", {TensorBytes{"w", "BF16", {4}, v}});
  const std::string msg = checkpoint_error([&] { open_checkpoint(dir.str(), tiny_config()); });
  EXPECT_THAT(msg, HasSubstr("in both 'a.safetensors' and 'b.safetensors', tensor 'w'"));
}

TEST(CheckpointIndex, BadIndexFilesAreErrors) {
  ScratchDir dir;
  write_safetensors(dir / "s.safetensors",
                    {TensorBytes{"w", "BF16", {2}, bf16_bytes(random_bf16(2, 1))}});
  const auto index = dir / "model.safetensors.index.json";
  const auto error_for = [&](const std::string& text) {
    std::ofstream(index, std::ios::trunc) << text;
    return checkpoint_error([&] { open_checkpoint(dir.str(), tiny_config()); });
  };
  EXPECT_THAT(error_for("{\"weight_map\": "),
              HasSubstr("model.safetensors.index.json: not valid JSON"));
  EXPECT_THAT(error_for("[]"), HasSubstr("is a JSON array, not an object"));
  EXPECT_THAT(error_for(R"({"metadata": {}})"), HasSubstr("has no 'weight_map' object"));
  EXPECT_THAT(error_for(R"({"metadata": {"total_size": "x"}, "weight_map": {}})"),
              HasSubstr("'metadata.total_size' is not a non-negative number"));
  EXPECT_THAT(error_for(R"({"weight_map": {"w": 3}})"),
              HasSubstr("weight_map entry is not a file name, tensor 'w'"));
  EXPECT_THAT(error_for(R"({"weight_map": {"w": "missing.safetensors"}})"),
              HasSubstr("weight_map names 'missing.safetensors', which is not a file"));
}

TEST(CheckpointIndex, IndexNamingTheWrongShardIsAnError) {
  ScratchDir dir;
  write_safetensors(dir / "s.safetensors",
                    {TensorBytes{"w", "BF16", {2}, bf16_bytes(random_bf16(2, 1))}});
  write_index(dir.path(), {{"w", "s.safetensors"}, {"v", "s.safetensors"}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_TRUE(ckpt->contains("v"));  // the index says so; the shard is only checked on read
  std::vector<bf16> dst(2);
  const std::string msg = checkpoint_error([&] { ckpt->read("v", std::vector<int64_t>{2}, dst); });
  EXPECT_THAT(msg, HasSubstr("header lacks it, tensor 'v'"));
}

TEST(CheckpointDirectory, MissingOrEmptyDirectoryIsAnError) {
  ScratchDir dir;
  EXPECT_THAT(checkpoint_error([&] { open_checkpoint((dir / "nope").string(), tiny_config()); }),
              HasSubstr("does not exist or is not a directory"));
  EXPECT_THAT(checkpoint_error([&] { open_checkpoint(dir.str(), tiny_config()); }),
              HasSubstr("no model.safetensors.index.json, model.safetensors or *.safetensors"));
}

// --- bad checkpoints (issue 4, item 6) through open_checkpoint ---

TEST(CheckpointErrors, MissingTensorIsNamedWithTheDirectory) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {TensorBytes{"w", "BF16", {2}, bf16_bytes(random_bf16(2, 1))}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_FALSE(ckpt->contains("model.layers.3.self_attn.o_proj.weight"));
  std::vector<bf16> dst(4);
  const std::string msg = checkpoint_error([&] {
    ckpt->read("model.layers.3.self_attn.o_proj.weight", std::vector<int64_t>{2, 2}, dst);
  });
  EXPECT_THAT(msg, HasSubstr(dir.str()));
  EXPECT_THAT(msg, HasSubstr("tensor not found in the checkpoint"));
  EXPECT_THAT(msg, HasSubstr("tensor 'model.layers.3.self_attn.o_proj.weight'"));
}

TEST(CheckpointErrors, WrongShapeNamesBothShapes) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {TensorBytes{"w", "BF16", {4, 8}, bf16_bytes(random_bf16(32, 1))}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  std::vector<bf16> dst(32);
  const std::string msg = checkpoint_error([&] {
    ckpt->read("w", std::vector<int64_t>{8, 4}, dst);
  });
  EXPECT_THAT(msg,
              HasSubstr("shape [4, 8] in the checkpoint, the model expects [8, 4], tensor 'w'"));
  EXPECT_EQ(ckpt->stats().bytes_read, 0);
}

TEST(CheckpointErrors, DestinationSizeMustMatchShape) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {TensorBytes{"w", "BF16", {4}, bf16_bytes(random_bf16(4, 1))}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  std::vector<bf16> dst(3);
  EXPECT_THAT(checkpoint_error([&] { ckpt->read("w", std::vector<int64_t>{4}, dst); }),
              HasSubstr("destination holds 3 elements but shape [4] has 4, tensor 'w'"));
}

// A bad shard behind an index is reported when it is first read, naming the shard file.
struct BadFileCase {
  const char* label;
  std::string header;  // written with correct length prefix, padded
  std::vector<uint8_t> data;
  const char* expect;  // substring of the message
};

void PrintTo(const BadFileCase& c, std::ostream* os) {
  *os << c.label;
}

class CheckpointBadShard : public ::testing::TestWithParam<BadFileCase> {};

TEST_P(CheckpointBadShard, IsOneClearErrorOnOpenAndOnRead) {
  const BadFileCase& c = GetParam();
  ScratchDir dir;
  // Without an index the header is validated when the directory is opened.
  write_header_and_data(dir / "model.safetensors", c.header, c.data);
  const std::string at_open = checkpoint_error([&] { open_checkpoint(dir.str(), tiny_config()); });
  EXPECT_THAT(at_open, HasSubstr("model.safetensors: "));
  EXPECT_THAT(at_open, HasSubstr(c.expect));

  // With an index it is validated when a tensor of the shard is first read.
  std::filesystem::rename(dir / "model.safetensors", dir / "shard.safetensors");
  write_index(dir.path(), {{"w", "shard.safetensors"}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  std::vector<bf16> dst(4);
  const std::string at_read =
      checkpoint_error([&] { ckpt->read("w", std::vector<int64_t>{4}, dst); });
  EXPECT_THAT(at_read, HasSubstr("shard.safetensors: "));
  EXPECT_THAT(at_read, HasSubstr(c.expect));
}

std::vector<uint8_t> zeros(size_t n) {
  return std::vector<uint8_t>(n, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Item6, CheckpointBadShard,
    ::testing::Values(
        BadFileCase{"unknown_dtype", R"({"w":{"dtype":"INT4","shape":[4],"data_offsets":[0,8]}})",
                    zeros(8), "unknown dtype 'INT4', tensor 'w'"},
        BadFileCase{"overlapping_offsets",
                    R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                    R"("v":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})",
                    zeros(8), "overlap tensor 'w' at [0, 8], tensor 'v'"},
        BadFileCase{"out_of_range_offsets",
                    R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[16,24]}})", zeros(8),
                    "data_offsets [16, 24] run past the end of the data buffer (8 bytes"},
        BadFileCase{"gap_between_tensors",
                    R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                    R"("v":{"dtype":"BF16","shape":[2],"data_offsets":[10,14]}})",
                    zeros(14), "gap of 2 bytes between tensor 'w' (ends at 8) and tensor 'v'"},
        BadFileCase{"header_not_json", R"({"w": {dtype: BF16}})", zeros(8),
                    "header is not valid JSON"},
        BadFileCase{"header_not_object", R"(["w", "BF16"])", zeros(8),
                    "header is a JSON array, not a JSON object"},
        BadFileCase{"byte_length_mismatch",
                    R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", zeros(8),
                    "span 8 bytes, but 4 elements of F32 need 16 bytes, tensor 'w'"}),
    [](const ::testing::TestParamInfo<BadFileCase>& info) {
      return std::string(info.param.label);
    });

// Damage that a well-formed header cannot express: raw bytes of the whole file.
TEST(CheckpointErrors, TruncatedEmptyAndOverlongHeaderFilesAreErrors) {
  const std::vector<std::pair<const char*, std::function<void(const std::filesystem::path&)>>>
      cases = {
          {"file is empty", [](const auto& p) { moe::testing::write_file_bytes(p, {}); }},
          {"shorter than the 8-byte header length",
           [](const auto& p) {
             moe::testing::write_file_bytes(p, {1, 0, 0});
           }},
          {"header length 512 runs past the end of the file",
           [](const auto& p) { moe::testing::write_raw(p, 512, "{}", {}); }},
          {"run past the end of the data buffer (6 bytes; file truncated?), tensor 'w'",
           [](const auto& p) {
             write_header_and_data(p, R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})",
                                   zeros(8));
             std::filesystem::resize_file(p, std::filesystem::file_size(p) - 2);
           }},
      };
  for (const auto& [expect, make] : cases) {
    ScratchDir dir;
    make(dir / "model.safetensors");
    const std::string msg = checkpoint_error([&] { open_checkpoint(dir.str(), tiny_config()); });
    EXPECT_THAT(msg, HasSubstr("model.safetensors: "));
    EXPECT_THAT(msg, HasSubstr(expect));
  }
}

// --- expert layouts ---

// Per-expert reference weights, and the same numbers written in each layout.
struct ExpertFixture {
  int64_t num_experts, inter, hidden;
  std::vector<std::vector<bf16>> gate, up, down;  // [E][I*H], [E][I*H], [E][H*I]

  ExpertFixture(int64_t e, int64_t i, int64_t h) : num_experts(e), inter(i), hidden(h) {
    for (int64_t x = 0; x < e; ++x) {
      gate.push_back(random_bf16(i * h, 1000 + 3 * x));
      up.push_back(random_bf16(i * h, 1001 + 3 * x));
      down.push_back(random_bf16(h * i, 1002 + 3 * x));
    }
  }
  static std::string expert_name(int64_t e, const char* part) {
    return "model.layers.0.mlp.experts." + std::to_string(e) + "." + part + "_proj.weight";
  }

  void write_per_expert(const std::filesystem::path& file) const {
    std::vector<TensorBytes> t;
    for (int64_t e = 0; e < num_experts; ++e) {
      t.push_back({expert_name(e, "gate"), "BF16", {inter, hidden}, bf16_bytes(gate[e])});
      t.push_back({expert_name(e, "up"), "BF16", {inter, hidden}, bf16_bytes(up[e])});
      t.push_back({expert_name(e, "down"), "BF16", {hidden, inter}, bf16_bytes(down[e])});
    }
    write_safetensors(file, t);
  }

  // gate_up [E, 2I, H] + down [E, H, I], or transposed [E, H, 2I] + [E, I, H]. As F32 when
  // `as_f32` (values are bf16-exact, so conversion must give the same bits).
  void write_fused(const std::filesystem::path& file, bool transposed, const std::string& suffix,
                   bool as_f32 = false) const {
    const int64_t I = inter, H = hidden;
    std::vector<bf16> gu(num_experts * 2 * I * H), dn(num_experts * H * I);
    for (int64_t e = 0; e < num_experts; ++e) {
      for (int64_t i = 0; i < I; ++i) {
        for (int64_t h = 0; h < H; ++h) {
          const bf16 g = gate[e][i * H + h], u = up[e][i * H + h], d = down[e][h * I + i];
          if (!transposed) {
            gu[(e * 2 * I + i) * H + h] = g;
            gu[(e * 2 * I + I + i) * H + h] = u;
            dn[(e * H + h) * I + i] = d;
          } else {
            gu[(e * H + h) * 2 * I + i] = g;
            gu[(e * H + h) * 2 * I + I + i] = u;
            dn[(e * I + i) * H + h] = d;
          }
        }
      }
    }
    const std::vector<int64_t> gu_shape = transposed ? std::vector<int64_t>{num_experts, H, 2 * I}
                                                     : std::vector<int64_t>{num_experts, 2 * I, H};
    const std::vector<int64_t> dn_shape = transposed ? std::vector<int64_t>{num_experts, I, H}
                                                     : std::vector<int64_t>{num_experts, H, I};
    const auto encode = [&](const std::vector<bf16>& v) {
      if (!as_f32) return bf16_bytes(v);
      std::vector<float> f;
      for (bf16 x : v) f.push_back(bf16_to_float(x));
      return to_bytes(f);
    };
    const char* dtype = as_f32 ? "F32" : "BF16";
    // A router tensor in between keeps the experts from being the whole file.
    write_safetensors(
        file, {{"model.layers.0.mlp.experts.gate_up_proj" + suffix, dtype, gu_shape, encode(gu)},
               {"model.layers.0.mlp.gate.weight",
                "BF16",
                {num_experts, H},
                bf16_bytes(random_bf16(num_experts * H, 5))},
               {"model.layers.0.mlp.experts.down_proj" + suffix, dtype, dn_shape, encode(dn)}});
  }
};

struct LayoutCase {
  const char* label;
  int64_t inter, hidden;
  bool transposed;
  const char* suffix;
  bool as_f32;
};

void PrintTo(const LayoutCase& c, std::ostream* os) {
  *os << c.label;
}

class CheckpointExpertLayouts : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(CheckpointExpertLayouts, FusedLayoutGivesSamePerExpertTensorsAsPerExpertLayout) {
  TraceReads trace;
  const LayoutCase& c = GetParam();
  const int64_t E = 4, I = c.inter, H = c.hidden;
  ExpertFixture fx(E, I, H);
  ScratchDir per_dir, fused_dir;
  fx.write_per_expert(per_dir / "model.safetensors");
  fx.write_fused(fused_dir / "model.safetensors", c.transposed, c.suffix, c.as_f32);
  auto per = open_checkpoint(per_dir.str(), tiny_config(E));
  auto fused = open_checkpoint(fused_dir.str(), tiny_config(E));

  const int64_t elem_bytes = c.as_f32 ? 4 : 2;
  int64_t reads = 0;
  // Experts in a scattered order: each read must land on its own slice.
  for (int64_t e : {2, 0, 3, 1}) {
    for (const char* part : {"gate", "up", "down"}) {
      const std::string name = ExpertFixture::expert_name(e, part);
      const std::vector<int64_t> shape =
          std::string(part) == "down" ? std::vector<int64_t>{H, I} : std::vector<int64_t>{I, H};
      ASSERT_TRUE(fused->contains(name)) << name;
      const auto want = bits_of(read_all(*per, name, shape));
      EXPECT_EQ(bits_of(read_all(*fused, name, shape)), want) << name;
      ++reads;
      // Only this expert's bytes are counted.
      EXPECT_EQ(fused->stats().bytes_read, reads * I * H * elem_bytes) << name;
    }
  }
  EXPECT_FALSE(fused->contains(ExpertFixture::expert_name(E, "gate")));  // past num_experts
  const LoadStats s = fused->stats();
  EXPECT_EQ(s.files_opened, 1);
  EXPECT_EQ(s.tensors_read, reads);
  EXPECT_EQ(s.tensors_touched.front(),
            std::string("model.safetensors:model.layers.0.mlp.experts.gate_up_proj") + c.suffix +
                "[expert 2, gate]");
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, CheckpointExpertLayouts,
    ::testing::Values(LayoutCase{"standard", 3, 5, false, "", false},
                      LayoutCase{"standard_weight_suffix", 3, 5, false, ".weight", false},
                      LayoutCase{"standard_f32", 3, 5, false, "", true},
                      LayoutCase{"transposed", 3, 5, true, "", false},
                      LayoutCase{"transposed_weight_suffix", 3, 5, true, ".weight", false},
                      LayoutCase{"transposed_f32", 3, 5, true, ".weight", true},
                      // H == 2I: gate_up is ambiguous on its own; down decides.
                      LayoutCase{"standard_h_eq_2i", 4, 8, false, "", false},
                      LayoutCase{"transposed_h_eq_2i", 4, 8, true, "", false},
                      // H == I: down is ambiguous on its own; gate_up decides.
                      LayoutCase{"standard_h_eq_i", 4, 4, false, "", false},
                      LayoutCase{"transposed_h_eq_i", 4, 4, true, "", false},
                      // Tiles of the transposing copy (32) with ragged edges.
                      LayoutCase{"transposed_large", 40, 70, true, "", false}),
    [](const ::testing::TestParamInfo<LayoutCase>& info) { return std::string(info.param.label); });

TEST(CheckpointExpertLayouts, AmbiguousFusedTensorAloneIsReadAsStandardLayout) {
  // Only gate_up [E, H, H] with H == 2I and no fused down: documented to mean [E, 2I, H].
  const int64_t E = 2, I = 2, H = 4;
  ExpertFixture fx(E, I, H);
  ScratchDir dir;
  std::vector<bf16> gu(E * 2 * I * H);
  for (int64_t e = 0; e < E; ++e) {
    std::copy(fx.gate[e].begin(), fx.gate[e].end(), gu.begin() + e * 2 * I * H);
    std::copy(fx.up[e].begin(), fx.up[e].end(), gu.begin() + e * 2 * I * H + I * H);
  }
  write_safetensors(
      dir / "model.safetensors",
      {{"model.layers.0.mlp.experts.gate_up_proj", "BF16", {E, 2 * I, H}, bf16_bytes(gu)}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config(E));
  EXPECT_EQ(bits_of(read_all(*ckpt, ExpertFixture::expert_name(1, "up"), {I, H})),
            bits_of(fx.up[1]));
  EXPECT_FALSE(ckpt->contains(ExpertFixture::expert_name(1, "down")));
}

TEST(CheckpointExpertLayouts, FusedTensorsInTwoShardsOpenOnlyWhatIsNeeded) {
  // gate_up and down of one layer in different shards (unambiguous shapes): reading gate and up
  // maps only the gate_up shard.
  const int64_t E = 2, I = 3, H = 5;
  ExpertFixture fx(E, I, H);
  ScratchDir src, dir;
  fx.write_fused(src / "all.safetensors", false, "");
  SafetensorsFile all = SafetensorsFile::open((src / "all.safetensors").string());
  std::vector<std::pair<std::string, std::string>> weight_map;
  for (const char* name :
       {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"}) {
    const SafetensorsTensor* t = all.header().find(name);
    const auto bytes = all.data(*t);
    const std::string file =
        std::string(name).find("down") != std::string::npos ? "b.safetensors" : "a.safetensors";
    write_safetensors(
        dir / file,
        {{name, "BF16", t->shape,
          std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()),
                               reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size())}});
    weight_map.emplace_back(name, file);
  }
  write_index(dir.path(), weight_map);
  auto ckpt = open_checkpoint(dir.str(), tiny_config(E));
  EXPECT_EQ(bits_of(read_all(*ckpt, ExpertFixture::expert_name(1, "gate"), {I, H})),
            bits_of(fx.gate[1]));
  EXPECT_EQ(bits_of(read_all(*ckpt, ExpertFixture::expert_name(1, "up"), {I, H})),
            bits_of(fx.up[1]));
  EXPECT_EQ(ckpt->stats().files_opened, 1);
  EXPECT_EQ(bits_of(read_all(*ckpt, ExpertFixture::expert_name(0, "down"), {H, I})),
            bits_of(fx.down[0]));
  EXPECT_EQ(ckpt->stats().files_opened, 2);
  EXPECT_EQ(ckpt->stats().bytes_read, 3 * I * H * 2);
}

TEST(CheckpointExpertLayouts, FusedShapeThatFitsNeitherLayoutNamesBothShapes) {
  const int64_t E = 2, I = 3, H = 5;
  ExpertFixture fx(E, I, H);
  ScratchDir dir;
  fx.write_fused(dir / "model.safetensors", false, "");
  auto ckpt = open_checkpoint(dir.str(), tiny_config(E));
  std::vector<bf16> dst(4 * H);
  const std::string msg = checkpoint_error([&] {
    ckpt->read(ExpertFixture::expert_name(0, "gate"), std::vector<int64_t>{4, H}, dst);
  });
  EXPECT_THAT(
      msg, HasSubstr("fused tensor 'model.layers.0.mlp.experts.gate_up_proj' has shape [2, 6, 5]"));
  EXPECT_THAT(msg,
              HasSubstr("expected [E, 8, 5] or [E, 5, 8] for the model's expert shape [4, 5]"));
  EXPECT_THAT(msg, HasSubstr("tensor 'model.layers.0.mlp.experts.0.gate_proj.weight'"));
}

TEST(CheckpointExpertLayouts, ExpertPastTheFusedTensorIsAnError) {
  const int64_t E = 2, I = 3, H = 5;
  ExpertFixture fx(E, I, H);
  ScratchDir dir;
  fx.write_fused(dir / "model.safetensors", true, "");
  auto ckpt = open_checkpoint(dir.str(), tiny_config(8));
  std::vector<bf16> dst(I * H);
  const std::string msg = checkpoint_error([&] {
    ckpt->read(ExpertFixture::expert_name(5, "down"), std::vector<int64_t>{H, I}, dst);
  });
  EXPECT_THAT(msg, HasSubstr("expert 5 requested, but fused tensor "
                             "'model.layers.0.mlp.experts.down_proj' holds 2 experts"));
}

TEST(CheckpointExpertLayouts, MissingExpertNamesTheFusedFormsLookedFor) {
  ScratchDir dir;
  write_safetensors(dir / "model.safetensors",
                    {TensorBytes{"w", "BF16", {2}, bf16_bytes(random_bf16(2, 1))}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  std::vector<bf16> dst(6);
  const std::string msg = checkpoint_error([&] {
    ckpt->read(ExpertFixture::expert_name(1, "up"), std::vector<int64_t>{2, 3}, dst);
  });
  EXPECT_THAT(msg, HasSubstr("nor a fused 'model.layers.0.mlp.experts.gate_up_proj[.weight]'"));
  EXPECT_THAT(msg, HasSubstr("tensor 'model.layers.0.mlp.experts.1.up_proj.weight'"));
}

TEST(CheckpointExpertLayouts, DenseMlpNamesAreReadDirectly) {
  ScratchDir dir;
  const auto g = random_bf16(12, 9);
  write_safetensors(
      dir / "model.safetensors",
      {TensorBytes{"model.layers.1.mlp.gate_proj.weight", "BF16", {3, 4}, bf16_bytes(g)}});
  auto ckpt = open_checkpoint(dir.str(), tiny_config());
  EXPECT_EQ(bits_of(read_all(*ckpt, "model.layers.1.mlp.gate_proj.weight", {3, 4})), bits_of(g));
  EXPECT_FALSE(ckpt->contains("model.layers.1.mlp.up_proj.weight"));
}

}  // namespace
}  // namespace moe::testing
