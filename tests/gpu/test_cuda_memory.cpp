// CUDA backend memory: byte accounting returns to its baseline, this process's device memory
// (NVML per process) grows by an allocation and no more, upload/download/copy/fill_zero
// round-trip, and the device count query never throws.
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "gpu_test_util.h"
#include "process_gpu_memory.h"

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

TEST_F(CudaOpsTest, ThisProcessGrowsByA256MiBAllocationAndNoMore) {
  // Bounded on this process's own usage (NVML), not the whole device's: other processes on a
  // shared GPU allocate and free at any time.
  const int device = cuda().device();
  const int64_t before = process_gpu_bytes(device);
  if (before < 0) {
    GTEST_SKIP() << "NVML cannot report this process's device memory here (no libnvidia-ml, or "
                    "the process is not visible to it, e.g. a container PID namespace)";
  }
  constexpr int64_t kBytes = int64_t{256} << 20;
  {
    Buffer<unsigned char> big(*gpu_, static_cast<size_t>(kBytes));
    gpu_->fill_zero(big.data(), big.size_bytes());
    gpu_->synchronize();
    const int64_t during = process_gpu_bytes(device);
    EXPECT_GE(during - before, kBytes);
    EXPECT_LT(during - before, kBytes + (int64_t{64} << 20));  // allocator granularity only
  }
  const int64_t after = process_gpu_bytes(device);
  EXPECT_LT(after - before, int64_t{64} << 20) << "the 256 MiB were not returned";
}

TEST_F(CudaOpsTest, DeviceTotalExceedsUsed) {
  EXPECT_GT(static_cast<int64_t>(cuda().device_total_bytes()), cuda().device_used_bytes());
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
