// CUDA backend memory: byte accounting returns to its baseline, cudaMemGetInfo sees allocations,
// upload/download/copy/fill_zero round-trip, and the device count query never throws.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "gpu_test_util.h"

namespace moe::kernels::test {
namespace {

TEST(CudaDevice, DeviceCountQueryNeverThrows) {
  int n = -1;
  EXPECT_NO_THROW(n = cuda_device_count());
  EXPECT_GE(n, 0);
  if (n == 0) {
    EXPECT_THROW(make_cuda_backend(0), moe::Error);
  }
}

TEST_F(CudaOpsTest, AllocationAccountingReturnsToBaseline) {
  const size_t base = gpu_->allocated_bytes();
  {
    Buffer<float> a(*gpu_, 1000);
    Buffer<bf16> b(*gpu_, 333);
    EXPECT_EQ(gpu_->allocated_bytes(), base + 4000 + 666);
    EXPECT_GE(gpu_->peak_allocated_bytes(), base + 4666);
  }
  EXPECT_EQ(gpu_->allocated_bytes(), base);
}

TEST_F(CudaOpsTest, DeviceUsedBytesSeesA256MiBAllocation) {
  const int64_t before = cuda().device_used_bytes();
  EXPECT_GT(static_cast<int64_t>(cuda().device_total_bytes()), before);
  Buffer<unsigned char> big(*gpu_, 256u << 20);
  gpu_->fill_zero(big.data(), big.size_bytes());
  gpu_->synchronize();
  const int64_t after = cuda().device_used_bytes();
  EXPECT_GE(after, before + (int64_t{256} << 20));
  EXPECT_LT(after, before + (int64_t{256} << 20) + (int64_t{64} << 20));  // allocator slack only
}

TEST_F(CudaOpsTest, UploadDownloadCopyAndFillZeroRoundTrip) {
  std::vector<int32_t> host(4097);
  std::iota(host.begin(), host.end(), -100);
  auto a = to_gpu(host);
  Buffer<int32_t> b(*gpu_, host.size());
  gpu_->copy(b.data(), a.data(), a.size_bytes());
  EXPECT_EQ(from_gpu(b), host);
  gpu_->fill_zero(b.data() + 1, 8 * sizeof(int32_t));
  const auto got = from_gpu(b);
  EXPECT_EQ(got[0], host[0]);
  for (int i = 1; i <= 8; ++i) EXPECT_EQ(got[i], 0);
  EXPECT_EQ(got[9], host[9]);
}

TEST_F(CudaOpsTest, DeviceFillsAreDeterministicAndInRange) {
  Buffer<float> a(*gpu_, 10000), b(*gpu_, 10000);
  cuda().fill_random_f32(a.data(), 10000, 42, 0.5f);
  cuda().fill_random_f32(b.data(), 10000, 42, 0.5f);
  const auto va = from_gpu(a), vb = from_gpu(b);
  EXPECT_EQ(va, vb);
  double mean = 0.0;
  for (float x : va) {
    ASSERT_GE(x, -0.5f);
    ASSERT_LE(x, 0.5f);
    mean += x;
  }
  EXPECT_NEAR(mean / 10000.0, 0.0, 0.02);
  Buffer<bf16> w(*gpu_, 1000);
  cuda().fill_random_bf16(w.data(), 1000, 7, 0.02f);
  for (bf16 x : from_gpu(w)) ASSERT_LE(std::fabs(bf16_to_float(x)), 0.02f * 1.01f);
}

TEST_F(CudaOpsTest, StreamIsExposedForCommunicators) {
  EXPECT_NE(cuda().stream(), nullptr);
  EXPECT_GE(cuda().device(), 0);
  EXPECT_GT(cuda().num_sms(), 0);
}

}  // namespace
}  // namespace moe::kernels::test
