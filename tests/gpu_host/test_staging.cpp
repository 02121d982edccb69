// StagingLayout: one packed upload per op; parts aligned to 16 bytes and copied intact.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/staging.h"

namespace moe::kernels::cuda {
namespace {

TEST(Staging, PartsAreSixteenByteAlignedAndPackedInOrder) {
  const std::vector<int32_t> a = {1, 2, 3};  // 12 bytes
  const std::vector<int64_t> b = {-5, 7};    // 16 bytes
  const std::vector<float> c = {0.5f};       // 4 bytes
  StagingLayout layout;
  const size_t at_a = layout.add_array(a.data(), 3);
  const size_t at_b = layout.add_array(b.data(), 2);
  const size_t at_c = layout.add_array(c.data(), 1);
  EXPECT_EQ(at_a, 0u);
  EXPECT_EQ(at_b, 16u);
  EXPECT_EQ(at_c, 32u);
  EXPECT_EQ(layout.size_bytes(), 36u);
  EXPECT_EQ(layout.num_parts(), 3);

  std::vector<unsigned char> buf(layout.size_bytes(), 0xAB);
  layout.pack(buf.data());
  EXPECT_EQ(reinterpret_cast<const int32_t*>(buf.data() + at_a)[2], 3);
  EXPECT_EQ(reinterpret_cast<const int64_t*>(buf.data() + at_b)[0], -5);
  EXPECT_EQ(reinterpret_cast<const int64_t*>(buf.data() + at_b)[1], 7);
  EXPECT_EQ(reinterpret_cast<const float*>(buf.data() + at_c)[0], 0.5f);
  EXPECT_EQ(buf[12], 0xAB);  // padding is not written
}

TEST(Staging, EmptyPartsReserveNothing) {
  StagingLayout layout;
  const int32_t x = 9;
  EXPECT_EQ(layout.add_array<int32_t>(nullptr, 0), 0u);
  EXPECT_EQ(layout.add_array(&x, 0), 0u);
  EXPECT_EQ(layout.size_bytes(), 0u);
  EXPECT_EQ(layout.num_parts(), 0);
  const size_t at = layout.add_array(&x, 1);
  EXPECT_EQ(at, 0u);
  // An empty part after a real one points at the aligned end and adds no bytes.
  EXPECT_EQ(layout.add_array<int32_t>(nullptr, 0), 16u);
  EXPECT_EQ(layout.size_bytes(), 4u);
}

TEST(Staging, GrownCapacityCoversNeedAndGrowsGeometrically) {
  EXPECT_EQ(grown_capacity(1024, 100), 1024u);  // fits: unchanged
  EXPECT_GE(grown_capacity(0, 100), 100u);
  EXPECT_EQ(grown_capacity(0, 100) % 256, 0u);
  EXPECT_GE(grown_capacity(1000, 1001), 1500u);  // at least 1.5x: no realloc per small step
  EXPECT_GE(grown_capacity(1000, 5000), 5000u);
}

}  // namespace
}  // namespace moe::kernels::cuda
