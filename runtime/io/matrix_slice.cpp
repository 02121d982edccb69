// matrix_slice.h: the e4m3 codes and block scales of a slice, copied out of mapped bytes.
#include "runtime/io/matrix_slice.h"

#include <algorithm>
#include <cstring>

#include "kernels/common/bf16.h"
#include "kernels/common/fp8.h"

namespace moe::runtime {

int64_t MatrixSlice::source_end() const {
  if (rows * cols == 0) return 0;
  return base + (transposed ? (cols - 1) * src_cols + c0 + rows : (r0 + rows) * src_cols);
}

void copy_slice_codes(const uint8_t* src, const MatrixSlice& m, uint8_t* codes) {
  if (m.rows * m.cols == 0) return;
  if (!m.transposed) {
    std::memcpy(codes, src + m.base + m.r0 * m.src_cols, static_cast<size_t>(m.rows * m.cols));
    return;
  }
  constexpr int64_t kTile = 32;
  for (int64_t r0 = 0; r0 < m.rows; r0 += kTile) {
    for (int64_t c0 = 0; c0 < m.cols; c0 += kTile) {
      for (int64_t c = c0; c < std::min(m.cols, c0 + kTile); ++c) {
        for (int64_t r = r0; r < std::min(m.rows, r0 + kTile); ++r) {
          codes[r * m.cols + c] = src[m.base + c * m.src_cols + m.c0 + r];
        }
      }
    }
  }
}

bool copy_slice_scales(const std::byte* src, SafetensorsDtype dtype, const MatrixSlice& m,
                       float* scales) {
  using kernels::kFp8Block;
  const int64_t sr = kernels::fp8_num_blocks(m.src_rows), sc = kernels::fp8_num_blocks(m.src_cols);
  const int64_t grid = m.matrix_index * sr * sc;
  const auto scale_at = [&](int64_t i) {
    if (dtype == SafetensorsDtype::kF32) {
      float f;
      std::memcpy(&f, src + (grid + i) * 4, 4);
      return f;
    }
    bf16 b;
    std::memcpy(&b.bits, src + (grid + i) * 2, 2);
    return bf16_to_float(b);
  };
  const int64_t br_n = kernels::fp8_num_blocks(m.rows), bc_n = kernels::fp8_num_blocks(m.cols);
  for (int64_t br = 0; br < br_n; ++br) {
    for (int64_t bc = 0; bc < bc_n; ++bc) {
      const auto [r_first, c_first] = m.source(br * kFp8Block, bc * kFp8Block);
      const auto [r_last, c_last] = m.source(std::min(m.rows, (br + 1) * kFp8Block) - 1,
                                             std::min(m.cols, (bc + 1) * kFp8Block) - 1);
      if (r_first / kFp8Block != r_last / kFp8Block || c_first / kFp8Block != c_last / kFp8Block) {
        return false;
      }
      scales[br * bc_n + bc] = scale_at((r_first / kFp8Block) * sc + c_first / kFp8Block);
    }
  }
  return true;
}

}  // namespace moe::runtime
