// safetensors reader: valid files parse to the tensors written, and every malformed file (issue
// 4, item 6) is one moe::Error("checkpoint") whose message names the problem and the tensor.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <type_traits>

#include "runtime/io/safetensors.h"
#include "safetensors_writer.h"

namespace moe::testing {  // where the safetensors_writer.h helpers live
namespace {

using namespace moe::runtime;
using ::testing::HasSubstr;

static_assert(!std::is_copy_constructible_v<SafetensorsFile>);
static_assert(!std::is_copy_assignable_v<SafetensorsFile>);
static_assert(std::is_nothrow_move_constructible_v<SafetensorsFile>);

// {"a": 4 BF16 values, "b": 2x3 F32} -> header for the pure parser.
const char* kTwoTensors = R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2,3],"data_offsets":[8,32]},)"
                          R"("__metadata__":{"format":"pt"}})";

TEST(SafetensorsHeader, ParsesTensorsSortedByOffsetWithMetadata) {
  const SafetensorsHeader h = parse_safetensors_header(kTwoTensors, 32, "x.safetensors");
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[0].dtype, SafetensorsDtype::kBF16);
  EXPECT_EQ(h.tensors[0].numel, 4);
  EXPECT_EQ(h.tensors[1].name, "b");
  EXPECT_EQ(h.tensors[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(h.tensors[1].begin_bytes, 8u);
  EXPECT_EQ(h.tensors[1].end_bytes, 32u);
  ASSERT_NE(h.find("b"), nullptr);
  EXPECT_EQ(h.find("b")->numel, 6);
  EXPECT_EQ(h.find("__metadata__"), nullptr);
  EXPECT_EQ(h.find("c"), nullptr);
  EXPECT_EQ(h.metadata.at("format"), "pt");
}

TEST(SafetensorsHeader, AcceptsScalarsAndEmptyTensorsAtTheSameOffset) {
  const SafetensorsHeader h =
      parse_safetensors_header(R"({"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
                               R"("e":{"dtype":"U8","shape":[0,5],"data_offsets":[8,8]},)"
                               R"("z":{"dtype":"I16","shape":[1],"data_offsets":[8,10]}})",
                               10, "x");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.find("s")->numel, 1);
  EXPECT_EQ(h.find("e")->numel, 0);
  EXPECT_EQ(parse_safetensors_header("{}", 0, "x").tensors.size(), 0u);
}

TEST(SafetensorsHeader, KnowsEveryDtypeSize) {
  const std::pair<const char*, int64_t> dtypes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  for (const auto& [name, size] : dtypes) {
    const std::string header = fmt::format(
        R"({{"t":{{"dtype":"{}","shape":[3],"data_offsets":[0,{}]}}}})", name, 3 * size);
    const SafetensorsHeader h = parse_safetensors_header(header, 3 * size, "x");
    EXPECT_EQ(dtype_size_bytes(h.tensors[0].dtype), size) << name;
    EXPECT_EQ(dtype_name(h.tensors[0].dtype), name);
  }
}

// The pure parser's error for `header` with a data buffer of `data_size` bytes.
std::string header_error(const std::string& header, uint64_t data_size) {
  return checkpoint_error([&] { parse_safetensors_header(header, data_size, "bad.safetensors"); });
}

TEST(SafetensorsHeader, RejectsHeaderThatIsNotJson) {
  const std::string msg = header_error(R"({"a":{"dtype":"BF16",)", 0);
  EXPECT_THAT(msg, HasSubstr("bad.safetensors"));
  EXPECT_THAT(msg, HasSubstr("header is not valid JSON"));
  EXPECT_THAT(header_error("", 0), HasSubstr("header is not valid JSON"));
}

TEST(SafetensorsHeader, RejectsInvalidUtf8InHeader) {
  EXPECT_THAT(header_error("{\"a\xff\xfe\":{}}", 0), HasSubstr("header is not valid JSON"));
}

TEST(SafetensorsHeader, RejectsJsonThatIsNotAnObject) {
  EXPECT_THAT(header_error("[1, 2, 3]", 0), HasSubstr("header is a JSON array, not a JSON object"));
  EXPECT_THAT(header_error("42", 0), HasSubstr("not a JSON object"));
}

TEST(SafetensorsHeader, RejectsEntryThatIsNotAnObject) {
  EXPECT_THAT(header_error(R"({"w": [1, 2]})", 0),
              HasSubstr("header entry is a JSON array, not an object, tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsUnknownDtypeNamingTensor) {
  const std::string msg =
      header_error(R"({"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,2]}})", 2);
  EXPECT_THAT(msg, HasSubstr("unknown dtype 'Q4_K', tensor 'w'"));
  EXPECT_THAT(header_error(R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,2]}})", 2),
              HasSubstr("'dtype' is a JSON number, not a string, tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsMissingFields) {
  EXPECT_THAT(header_error(R"({"w":{"shape":[2],"data_offsets":[0,4]}})", 4),
              HasSubstr("no 'dtype', tensor 'w'"));
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","data_offsets":[0,4]}})", 4),
              HasSubstr("no 'shape', tensor 'w'"));
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","shape":[2]}})", 4),
              HasSubstr("no 'data_offsets', tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsNegativeOrNonIntegerShape) {
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","shape":[-2],"data_offsets":[0,4]}})", 4),
              HasSubstr("shape has an entry that is not a non-negative integer, tensor 'w'"));
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","shape":[2.0],"data_offsets":[0,4]}})", 4),
              HasSubstr("not a non-negative integer, tensor 'w'"));
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","shape":"2","data_offsets":[0,4]}})", 4),
              HasSubstr("'shape' is a JSON string, not an array, tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsShapeWhoseElementCountOverflows) {
  EXPECT_THAT(header_error(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],)"
                           R"("data_offsets":[0,0]}})",
                           0),
              HasSubstr("overflows 64 bits, tensor 'w'"));
  // Fits in elements, overflows in bytes.
  EXPECT_THAT(header_error(R"({"w":{"dtype":"F64","shape":[4611686018427387904],)"
                           R"("data_offsets":[0,0]}})",
                           0),
              HasSubstr("overflows 64 bits, tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsMalformedDataOffsets) {
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[0]}})", 4),
              HasSubstr("'data_offsets' is not [begin, end]"));
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[-4,0]}})", 4),
              HasSubstr("'data_offsets' is not [begin, end]"));
  EXPECT_THAT(header_error(R"({"w":{"dtype":"BF16","shape":[0],"data_offsets":[4,0]}})", 4),
              HasSubstr("begin > end, tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsOffsetsPastTheDataBuffer) {
  const std::string msg =
      header_error(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", 6);
  EXPECT_THAT(msg, HasSubstr("data_offsets [0, 8] run past the end of the data buffer (6 bytes"));
  EXPECT_THAT(msg, HasSubstr("tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsByteLengthThatIsNotElementsTimesDtypeSize) {
  const std::string msg =
      header_error(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12);
  EXPECT_THAT(msg, HasSubstr("span 12 bytes, but 4 elements of F32 need 16 bytes, tensor 'w'"));
}

TEST(SafetensorsHeader, RejectsOverlappingTensorsNamingBoth) {
  const std::string msg = header_error(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                                       R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[6,14]}})",
                                       14);
  EXPECT_THAT(msg, HasSubstr("overlap tensor 'a' at [0, 8], tensor 'b'"));
  // Two tensors on exactly the same bytes overlap too.
  EXPECT_THAT(header_error(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})",
                           8),
              HasSubstr("overlap tensor 'a'"));
}

TEST(SafetensorsHeader, RejectsGapBetweenTensors) {
  const std::string msg =
      header_error(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},)"
                   R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[12,16]}})",
                   16);
  EXPECT_THAT(msg, HasSubstr("gap of 4 bytes between tensor 'a' (ends at 8) and tensor 'b'"));
}

TEST(SafetensorsHeader, RejectsGapAtStartAndTrailingBytes) {
  EXPECT_THAT(header_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})", 8),
              HasSubstr("gap of 4 bytes at the start of the data buffer"));
  EXPECT_THAT(header_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", 10),
              HasSubstr("gap of 6 trailing bytes"));
  EXPECT_THAT(header_error("{}", 3), HasSubstr("holds 3 bytes but the header lists no tensors"));
}

TEST(SafetensorsHeader, RejectsMetadataThatIsNotStringToString) {
  EXPECT_THAT(header_error(R"({"__metadata__":{"format":1}})", 0),
              HasSubstr("__metadata__ value of key 'format' is a JSON number, not a string"));
  EXPECT_THAT(header_error(R"({"__metadata__":["pt"]})", 0),
              HasSubstr("__metadata__ is a JSON array"));
}

TEST(SafetensorsHeader, ClipsHugeNamesInMessages) {
  const std::string name(100000, 'n');
  const std::string msg = header_error(
      fmt::format(R"({{"{}":{{"dtype":"X","shape":[],"data_offsets":[0,0]}}}})", name), 0);
  EXPECT_THAT(msg, HasSubstr("unknown dtype 'X'"));
  EXPECT_LT(msg.size(), 1000u);
}

// --- whole file images and files on disk ---

std::vector<uint8_t> image_of(uint64_t length, const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> image(8 + header.size() + data_bytes, 0);
  for (int i = 0; i < 8; ++i) image[i] = static_cast<uint8_t>(length >> (8 * i));
  std::copy(header.begin(), header.end(), image.begin() + 8);
  return image;
}

TEST(SafetensorsImage, ParsesImageWithPaddedHeader) {
  std::string header = kTwoTensors;
  header.append(3, ' ');
  const SafetensorsHeader h = parse_safetensors_image(image_of(header.size(), header, 32), "img");
  EXPECT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.data_size_bytes, 32u);
}

TEST(SafetensorsImage, RejectsEmptyShortAndOverlongImages) {
  EXPECT_THAT(checkpoint_error([] { parse_safetensors_image({}, "img"); }),
              HasSubstr("img: file is empty"));
  const std::vector<uint8_t> five(5, 0);
  EXPECT_THAT(checkpoint_error([&] { parse_safetensors_image(five, "img"); }),
              HasSubstr("file is 5 bytes, shorter than the 8-byte header length"));
  const auto past = image_of(1000, "{}", 0);
  EXPECT_THAT(checkpoint_error([&] { parse_safetensors_image(past, "img"); }),
              HasSubstr("header length 1000 runs past the end of the file (10 bytes"));
  const auto huge = image_of(~0ull, "{}", 0);
  EXPECT_THAT(checkpoint_error([&] { parse_safetensors_image(huge, "img"); }),
              HasSubstr("exceeds the 100000000 byte (100 MB) limit"));
}

TEST(SafetensorsFile, MapsFileAndReturnsEachTensorsBytes) {
  ScratchDir dir;
  const std::vector<bf16> a = random_bf16(6, 1), b = random_bf16(10, 2);
  write_safetensors(dir / "m.safetensors", {TensorBytes{"a", "BF16", {2, 3}, bf16_bytes(a)},
                                            TensorBytes{"b", "BF16", {10}, bf16_bytes(b)}});
  SafetensorsFile opened = SafetensorsFile::open((dir / "m.safetensors").string());
  SafetensorsFile f = std::move(opened);  // move-only handle keeps the mapping
  ASSERT_NE(f.header().find("b"), nullptr);
  const auto bytes = f.data(*f.header().find("b"));
  ASSERT_EQ(bytes.size(), 20u);
  EXPECT_EQ(std::memcmp(bytes.data(), b.data(), 20), 0);
  const auto a_bytes = f.data(*f.header().find("a"));
  EXPECT_EQ(std::memcmp(a_bytes.data(), a.data(), 12), 0);

  const SafetensorsHeader h = read_safetensors_header((dir / "m.safetensors").string());
  EXPECT_EQ(h.tensors.size(), 2u);
}

TEST(SafetensorsFile, EmptyFileIsAnError) {
  ScratchDir dir;
  write_file_bytes(dir / "e.safetensors", {});
  const std::string msg =
      checkpoint_error([&] { SafetensorsFile::open((dir / "e.safetensors").string()); });
  EXPECT_THAT(msg, HasSubstr("e.safetensors: file is empty"));
  EXPECT_THAT(checkpoint_error([&] { read_safetensors_header((dir / "e.safetensors").string()); }),
              HasSubstr("file is empty"));
}

TEST(SafetensorsFile, HeaderLengthPastTheEndIsAnError) {
  ScratchDir dir;
  write_raw(dir / "h.safetensors", 4096, "{}", {});
  EXPECT_THAT(checkpoint_error([&] { SafetensorsFile::open((dir / "h.safetensors").string()); }),
              HasSubstr("header length 4096 runs past the end of the file (10 bytes"));
}

TEST(SafetensorsFile, HeaderOverTheSizeLimitIsAnError) {
  ScratchDir dir;
  write_raw(dir / "h.safetensors", 200'000'000, "{}", {});
  EXPECT_THAT(checkpoint_error([&] { SafetensorsFile::open((dir / "h.safetensors").string()); }),
              HasSubstr("exceeds the 100000000 byte (100 MB) limit"));
}

TEST(SafetensorsFile, TruncatedFileNamesTheCutTensor) {
  ScratchDir dir;
  write_safetensors(dir / "t.safetensors",
                    {TensorBytes{"first", "BF16", {4}, bf16_bytes(random_bf16(4, 3))},
                     TensorBytes{"last", "BF16", {4}, bf16_bytes(random_bf16(4, 4))}});
  const auto path = dir / "t.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 3);
  const std::string msg = checkpoint_error([&] { SafetensorsFile::open(path.string()); });
  EXPECT_THAT(msg, HasSubstr("run past the end of the data buffer"));
  EXPECT_THAT(msg, HasSubstr("file truncated?"));
  EXPECT_THAT(msg, HasSubstr("tensor 'last'"));
}

TEST(SafetensorsFile, TrailingBytesAfterTheLastTensorAreAnError) {
  ScratchDir dir;
  std::vector<uint8_t> data = bf16_bytes(random_bf16(4, 3));
  data.push_back(0);
  write_header_and_data(dir / "t.safetensors",
                        R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", data);
  EXPECT_THAT(checkpoint_error([&] { SafetensorsFile::open((dir / "t.safetensors").string()); }),
              HasSubstr("gap of 1 trailing bytes"));
}

TEST(SafetensorsFile, MissingFileAndDirectoryAreErrors) {
  ScratchDir dir;
  EXPECT_THAT(checkpoint_error([&] { SafetensorsFile::open((dir / "nope").string()); }),
              HasSubstr("cannot open"));
  EXPECT_THAT(checkpoint_error([&] { SafetensorsFile::open(dir.str()); }),
              HasSubstr("not a regular file"));
}

}  // namespace
}  // namespace moe::testing
