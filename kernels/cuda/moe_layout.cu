// Device-side expert-parallel layout: each kernel runs one body of kernels/common/moe_layout.h
// per thread (the bodies, their order and their invariants are documented there; the CPU tests
// run the same bodies through layout::emulate). Views are passed by value (kernel parameters).
#include <cuda_runtime.h>

#include "kernels/cuda/moe_layout_launch.h"

namespace moe::kernels::cuda {
namespace {

constexpr int kThreads = 128;

constexpr int32_t kMaxGridY = 65535;  // rows beyond it loop (gridDim.y limit)

int blocks_for(int64_t n) {
  return static_cast<int>((n + kThreads - 1) / kThreads);
}

// Kernel running Body(view, i) for i < n.
#define MOE_LAYOUT_KERNEL(name, View, body)                                              \
  __global__ void name(View v, int32_t n) {                                              \
    const int32_t i =                                                                    \
        static_cast<int32_t>(blockIdx.x) * kThreads + static_cast<int32_t>(threadIdx.x); \
    if (i < n) layout::body(v, i);                                                       \
  }

MOE_LAYOUT_KERNEL(count_experts_kernel, layout::SourceLayoutView, count_experts)
MOE_LAYOUT_KERNEL(scan_experts_kernel, layout::SourceLayoutView, scan_experts)
MOE_LAYOUT_KERNEL(choose_slot_kernel, layout::SourceLayoutView, choose_slot)
MOE_LAYOUT_KERNEL(token_dests_kernel, layout::SourceLayoutView, token_dests)
MOE_LAYOUT_KERNEL(count_dests_kernel, layout::SourceLayoutView, count_dests)
MOE_LAYOUT_KERNEL(scan_dests_kernel, layout::SourceLayoutView, scan_dests)
MOE_LAYOUT_KERNEL(assign_rows_kernel, layout::SourceLayoutView, assign_rows)
MOE_LAYOUT_KERNEL(count_slots_kernel, layout::SlotGroupingView, count_slots)
MOE_LAYOUT_KERNEL(scan_slots_kernel, layout::SlotGroupingView, scan_slots)
MOE_LAYOUT_KERNEL(assign_pairs_kernel, layout::SlotGroupingView, assign_pairs)
#undef MOE_LAYOUT_KERNEL

__global__ void scan_rows_kernel(layout::SourceLayoutView v) {
  layout::scan_rows(v);
}
__global__ void scan_slot_begin_kernel(layout::SlotGroupingView v) {
  layout::scan_slot_begin(v);
}

template <class View, class Kernel>
void launch_over(Kernel kernel, const View& v, int32_t n, cudaStream_t stream) {
  if (n > 0) kernel<<<blocks_for(n), kThreads, 0, stream>>>(v, n);
}

__global__ void combine_partial_kernel(const RouteEntry* routes, const int32_t* pair_of_entry,
                                       const float* expert_out, int64_t width, int32_t top_k,
                                       int32_t num_rows, int32_t own_begin, int32_t own_rows,
                                       float* partial) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= width) return;
  for (int32_t r = static_cast<int32_t>(blockIdx.y); r < num_rows;
       r += static_cast<int32_t>(gridDim.y)) {
    float* row = partial + layout::own_last_row(r, own_begin, own_rows, num_rows) * width;
    layout::partial_span<1>(routes, pair_of_entry, expert_out, width, top_k, r, c, c + 1, row);
  }
}

__global__ void combine_residual_kernel(layout::CombineSources src, const int32_t* token_offsets,
                                        const int32_t* token_rows, int64_t width,
                                        int32_t num_tokens, float* x) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= width) return;
  for (int32_t t = static_cast<int32_t>(blockIdx.y); t < num_tokens;
       t += static_cast<int32_t>(gridDim.y)) {
    layout::combine_residual_span<1>(src, token_offsets, token_rows, width, t, c, c + 1,
                                     x + t * width);
  }
}

}  // namespace

cudaError_t launch_source_layout(const layout::SourceLayoutView& v, cudaStream_t stream) {
  const int32_t C = layout::num_chunks(v.num_tokens, v.chunk_size);
  const int32_t P = v.num_tokens * v.top_k;
  cudaError_t rc = cudaMemsetAsync(v.error, 0, sizeof(int32_t), stream);
  if (rc != cudaSuccess) return rc;
  launch_over(count_experts_kernel, v, C, stream);
  launch_over(scan_experts_kernel, v, v.table.num_experts, stream);
  launch_over(choose_slot_kernel, v, P, stream);
  launch_over(token_dests_kernel, v, v.num_tokens, stream);
  launch_over(count_dests_kernel, v, C, stream);
  launch_over(scan_dests_kernel, v, v.table.num_ranks, stream);
  scan_rows_kernel<<<1, 1, 0, stream>>>(v);
  launch_over(assign_rows_kernel, v, v.num_tokens, stream);
  return cudaGetLastError();
}

cudaError_t launch_slot_grouping(const layout::SlotGroupingView& v, cudaStream_t stream) {
  const int32_t C = layout::num_chunks(v.num_rows, v.chunk_size);
  cudaError_t rc = cudaMemsetAsync(v.error, 0, sizeof(int32_t), stream);
  if (rc != cudaSuccess) return rc;
  launch_over(count_slots_kernel, v, C, stream);
  launch_over(scan_slots_kernel, v, v.num_slots, stream);
  scan_slot_begin_kernel<<<1, 1, 0, stream>>>(v);
  launch_over(assign_pairs_kernel, v, v.num_rows, stream);
  return cudaGetLastError();
}

cudaError_t launch_combine_partial(const RouteEntry* routes, const int32_t* pair_of_entry,
                                   const float* expert_out, int64_t width, int32_t top_k,
                                   int32_t num_rows, int32_t own_begin, int32_t own_rows,
                                   float* partial, cudaStream_t stream) {
  if (num_rows <= 0 || width <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(blocks_for(width)),
                  static_cast<unsigned>(num_rows < kMaxGridY ? num_rows : kMaxGridY));
  combine_partial_kernel<<<grid, kThreads, 0, stream>>>(
      routes, pair_of_entry, expert_out, width, top_k, num_rows, own_begin, own_rows, partial);
  return cudaGetLastError();
}

cudaError_t launch_combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                                    const int32_t* token_rows, int64_t width, int32_t num_tokens,
                                    float* x, cudaStream_t stream) {
  if (num_tokens <= 0 || width <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(blocks_for(width)),
                  static_cast<unsigned>(num_tokens < kMaxGridY ? num_tokens : kMaxGridY));
  combine_residual_kernel<<<grid, kThreads, 0, stream>>>(src, token_offsets, token_rows, width,
                                                         num_tokens, x);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
