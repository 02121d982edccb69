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

__global__ void pack_header_kernel(wire::PackView v) {
  const int32_t d = static_cast<int32_t>(threadIdx.x);
  if (d < v.num_ranks) wire::pack_header(v, d);
}

__global__ void pack_routes_kernel(wire::PackView v) {
  const int32_t i = static_cast<int32_t>(blockIdx.x) * kThreads + static_cast<int32_t>(threadIdx.x);
  if (i < v.max_rows) wire::pack_routes(v, i);
}

// Thread per column (fp32 / bf16) or per scaling block (fp8), rows blockIdx.y + j gridDim.y.
__global__ void pack_columns_kernel(wire::PackView v, int64_t items) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= items) return;
  for (int32_t i = static_cast<int32_t>(blockIdx.y); i < v.max_rows;
       i += static_cast<int32_t>(gridDim.y)) {
    if (v.f.dtype == WireDtype::kFP8) {
      wire::pack_fp8_block(v, i, c);
    } else {
      wire::pack_columns(v, i, c, c + 1);
    }
  }
}

__global__ void plan_receive_kernel(wire::ReceiveView v) {
  wire::plan_receive(v);
}

__global__ void receive_routes_kernel(wire::ReceiveView v) {
  const int32_t r = static_cast<int32_t>(blockIdx.x) * kThreads + static_cast<int32_t>(threadIdx.x);
  if (r < v.max_rows) wire::receive_routes(v, r);
}

__global__ void receive_columns_kernel(wire::ReceiveView v) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= v.f.width) return;
  for (int32_t r = static_cast<int32_t>(blockIdx.y); r < v.max_rows;
       r += static_cast<int32_t>(gridDim.y)) {
    wire::receive_columns(v, r, c, c + 1);
  }
}

__global__ void combine_partial_kernel(layout::PartialRowsView v) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= v.width) return;
  for (int32_t q = static_cast<int32_t>(blockIdx.y); q < v.num_rows - v.own_rows;
       q += static_cast<int32_t>(gridDim.y)) {
    layout::partial_row_span<1>(v, q, c, c + 1);
  }
}

dim3 row_grid(int64_t columns, int32_t rows) {
  return dim3(static_cast<unsigned>(blocks_for(columns)),
              static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
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

cudaError_t launch_pack_rows(const wire::PackView& v, cudaStream_t stream) {
  if (v.num_ranks > 0) pack_header_kernel<<<1, v.num_ranks, 0, stream>>>(v);
  if (v.max_rows > 0 && v.f.width > 0) {
    pack_routes_kernel<<<blocks_for(v.max_rows), kThreads, 0, stream>>>(v);
    const int64_t items =
        v.f.dtype == WireDtype::kFP8 ? (v.f.width + kFp8Block - 1) / kFp8Block : v.f.width;
    pack_columns_kernel<<<row_grid(items, v.max_rows), kThreads, 0, stream>>>(v, items);
  }
  return cudaGetLastError();
}

cudaError_t launch_receive_rows(const wire::ReceiveView& v, cudaStream_t stream) {
  plan_receive_kernel<<<1, 1, 0, stream>>>(v);
  if (v.max_rows > 0 && v.f.width > 0) {
    receive_routes_kernel<<<blocks_for(v.max_rows), kThreads, 0, stream>>>(v);
    receive_columns_kernel<<<row_grid(v.f.width, v.max_rows), kThreads, 0, stream>>>(v);
  }
  return cudaGetLastError();
}

cudaError_t launch_combine_partial(const layout::PartialRowsView& v, cudaStream_t stream) {
  const int32_t rows = v.num_rows - v.own_rows;
  if (rows <= 0 || v.width <= 0) return cudaSuccess;
  combine_partial_kernel<<<row_grid(v.width, rows), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t launch_combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                                    const int32_t* token_rows, int64_t width, int32_t num_tokens,
                                    float* x, cudaStream_t stream) {
  if (num_tokens <= 0 || width <= 0) return cudaSuccess;
  combine_residual_kernel<<<row_grid(width, num_tokens), kThreads, 0, stream>>>(
      src, token_offsets, token_rows, width, num_tokens, x);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
