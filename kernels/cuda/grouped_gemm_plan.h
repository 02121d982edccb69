// Host plan of one grouped_expert_swiglu call on the GPU: which x rows are gathered where, and
// the argument arrays of the three cublasGemmGroupedBatchedEx calls (gate, up, down), one cuBLAS
// group per non-empty expert group. Pure host code (no CUDA headers): unit-tested on the CPU.
//
// Compact scratch layout (bf16), Pc = num_compact_rows, groups in the caller's order, each group
// starting at a multiple of row_align rows so every GEMM operand pointer is 16-byte aligned:
//
//   x_c    [Pc, hidden]  row j = bf16(x[gather_src[j]])      (padding rows: zero)
//   gate_c [Pc, inter]   gate_g(x_c rows of g)               (bf16 output of the grouped GEMM)
//   up_c   [Pc, inter]
//   act_c  [Pc, inter]   bf16(silu(gate_c) * up_c)
//   down_c [Pc, hidden]  down_g(act_c rows of g)
//   out    [P, hidden]   out[scatter_dst[j]] = float(down_c[j])  (fp32, caller's row order)
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/op_args.h"

namespace moe::kernels::cuda {

enum class Projection { kGate, kUp, kDown };

struct GroupedSwigluPlan {
  int64_t hidden = 0;
  int64_t inter = 0;
  int64_t row_align = 1;             // compact row stride unit of a group's first row
  int64_t num_compact_rows = 0;      // Pc, padding included
  int64_t num_entries = 0;           // entries covered by the groups (sum of counts)
  int64_t out_rows = 0;              // max over groups of begin + count
  std::vector<int32_t> gather_src;   // [Pc] x row of compact row j; -1 on padding
  std::vector<int32_t> scatter_dst;  // [Pc] out row of compact row j; -1 on padding
  // One entry per non-empty expert group, in the caller's order.
  std::vector<ExpertWeights> weights;
  std::vector<int64_t> compact_begin;  // first compact row
  std::vector<int32_t> rows;           // rows of this group (GEMM n)

  int64_t num_gemm_groups() const { return static_cast<int64_t>(rows.size()); }
  // Element counts of the bf16 scratch tensors drawn above.
  int64_t x_elems() const { return num_compact_rows * hidden; }
  int64_t inter_elems() const { return num_compact_rows * inter; }
};

// Validates the groups (count >= 0, begin >= 0, no two groups share an entry, weights set on
// non-empty groups, row_index >= 0, sizes that fit cuBLAS's int) and builds the plan. Throws
// moe::Error on bad input.
GroupedSwigluPlan plan_grouped_swiglu(const ExpertGroup* groups, int64_t num_groups,
                                      const int32_t* row_index, int64_t hidden, int64_t inter);

// Smallest r with (r * hidden) % 8 == 0 and (r * inter) % 8 == 0: 8 bf16 = 16 bytes.
int64_t grouped_row_align(int64_t hidden, int64_t inter);

// Device base addresses of the compact scratch tensors.
struct GroupedScratch {
  const void* x = nullptr;
  void* gate = nullptr;
  void* up = nullptr;
  void* act = nullptr;
  void* down = nullptr;
};

// Host-side argument arrays of one cublasGemmGroupedBatchedEx call in column-major terms:
// C (m x n) = op(A) (m x k) * B (k x n) with op(A) = A^T, i.e. y^T = W x^T for y = x W^T with
// W [out, in] row-major (= in x out column-major, lda = in). group_count entries each; the
// pointer arrays (problem_count = group_count, group_size 1) are uploaded to the device.
struct GroupedGemmArgs {
  std::vector<int> m, n, k, lda, ldb, ldc, group_size;
  std::vector<float> alpha, beta;
  std::vector<const void*> a, b;
  std::vector<void*> c;
  int group_count() const { return static_cast<int>(m.size()); }
};

GroupedGemmArgs grouped_gemm_args(const GroupedSwigluPlan& plan, Projection projection,
                                  const GroupedScratch& scratch);

}  // namespace moe::kernels::cuda
