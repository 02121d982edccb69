// StagingLayout packing and the growth rule for reusable device/pinned buffers (host-only code,
// compiled with the host compiler and unit-tested without a GPU).
#include "kernels/cuda/staging.h"

#include <algorithm>

namespace moe::kernels::cuda {

size_t StagingLayout::add(const void* src, size_t size_bytes) {
  const size_t offset = align_up(size_bytes_, kStagingAlign);
  if (src == nullptr || size_bytes == 0) return offset;
  parts_.push_back({src, offset, size_bytes});
  size_bytes_ = offset + size_bytes;
  return offset;
}

void StagingLayout::pack(void* dst) const {
  auto* out = static_cast<unsigned char*>(dst);
  for (const Part& p : parts_) std::memcpy(out + p.offset, p.src, p.size_bytes);
}

size_t grown_capacity(size_t old_capacity, size_t needed) {
  if (needed <= old_capacity) return old_capacity;
  return align_up(std::max(needed, old_capacity + old_capacity / 2), 256);
}

}  // namespace moe::kernels::cuda
