// Where a requested weight matrix lies in a stored safetensors tensor (the whole tensor, one
// expert's part of a fused tensor, or its transposed form), and the copies of an e4m3 slice's
// codes and 128 x 128 block scales out of the mapped bytes. Internal to runtime/io: the
// checkpoint reader (checkpoint.cpp) decides the slice and reports errors; these only copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "runtime/io/safetensors.h"

namespace moe::runtime {

// dst [rows, cols] in a stored tensor: a matrix [src_rows, src_cols] starting at element `base`
// (an expert's slab of a fused tensor, or the whole tensor), with dst(r, c) = src(r0 + r, c)
// when not transposed and src(c, c0 + r) when transposed.
struct MatrixSlice {
  int64_t base = 0;
  int64_t src_rows = 0, src_cols = 0;
  int64_t rows = 0, cols = 0;  // dst
  int64_t r0 = 0, c0 = 0;
  bool transposed = false;
  int64_t matrix_index = 0;  // which [src_rows, src_cols] matrix of the tensor (the expert)
  // Source (row, col) of dst element (r, c).
  std::pair<int64_t, int64_t> source(int64_t r, int64_t c) const {
    return transposed ? std::pair{c, c0 + r} : std::pair{r0 + r, c};
  }
  // One past the last source element the slice reads (0 for an empty slice).
  int64_t source_end() const;
};

// codes [rows * cols] of slice m from the stored codes `src` (bytes copied as they are;
// transposed in 32 x 32 tiles).
void copy_slice_codes(const uint8_t* src, const MatrixSlice& m, uint8_t* codes);

// scales [ceil(rows / 128), ceil(cols / 128)] of slice m from the stored scale grids `src`
// (dtype F32 or BF16; one [ceil(src_rows / 128), ceil(src_cols / 128)] grid per matrix). Returns
// false, writing nothing further, when a destination block spans two stored blocks (the slice
// then has no block scales of its own).
bool copy_slice_scales(const std::byte* src, SafetensorsDtype dtype, const MatrixSlice& m,
                       float* scales);

}  // namespace moe::runtime
