// Packing of one op's host-side metadata (ids, row indices, offsets, pointer arrays) into a
// single contiguous staging upload, so every op issues at most one host->device copy.
// Invariant: every part starts at a multiple of kStagingAlign bytes; parts never overlap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace moe::kernels::cuda {

inline constexpr size_t kStagingAlign = 16;

class StagingLayout {
 public:
  // Reserves room for `size_bytes` bytes copied from `src` (host); returns the part's offset.
  // A null src or zero size reserves nothing and returns the current end.
  size_t add(const void* src, size_t size_bytes);
  template <class T>
  size_t add_array(const T* src, int64_t count) {
    return add(src, static_cast<size_t>(count) * sizeof(T));
  }
  size_t size_bytes() const { return size_bytes_; }
  int64_t num_parts() const { return static_cast<int64_t>(parts_.size()); }
  // Copies every part to its offset in `dst` (at least size_bytes() bytes).
  void pack(void* dst) const;

 private:
  struct Part {
    const void* src;
    size_t offset;
    size_t size_bytes;
  };
  std::vector<Part> parts_;
  size_t size_bytes_ = 0;
};

// Rounds up to a multiple of `align` (a power of two).
inline size_t align_up(size_t n, size_t align) {
  return (n + align - 1) & ~(align - 1);
}

// Growth rule for reusable buffers: at least `needed`, and at least 1.5x the old capacity so a
// slowly growing batch does not reallocate every step.
size_t grown_capacity(size_t old_capacity, size_t needed);

}  // namespace moe::kernels::cuda
