// Launchers of the device-side expert-parallel layout (kernels/common/moe_layout.h): one thread
// per body index, in the launch order that header lists, all on one stream, no host sync. Every
// view pointer is device memory. Plain C++ header: the host compiler includes it too.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/common/moe_layout.h"

namespace moe::kernels::cuda {

// The source side: counts, replica choice, dedup, rows, routes, token rows, header. Resets
// *view.error first.
cudaError_t launch_source_layout(const layout::SourceLayoutView& view, cudaStream_t stream);
// The receiver side: slot_begin, row_index, pair_of_entry. Resets *view.error first.
cudaError_t launch_slot_grouping(const layout::SlotGroupingView& view, cudaStream_t stream);
// Every send row into its message (kernels/common/moe_wire.h): headers, route entries, rows
// (one thread per column, or per scaling block for fp8).
cudaError_t launch_pack_rows(const wire::PackView& view, cudaStream_t stream);
// The received messages into the experts' input rows and route entries: the plan (one thread),
// then one thread per received row (routes) and per (row, column).
cudaError_t launch_receive_rows(const wire::ReceiveView& view, cudaStream_t stream);
// The outgoing partial rows (layout::partial_row_span), one thread per (row, column).
cudaError_t launch_combine_partial(const layout::PartialRowsView& view, cudaStream_t stream);
// x[t] = layout::combine_residual_element(t), one thread per (token, column).
cudaError_t launch_combine_residual(const layout::CombineSources& src, const int32_t* token_offsets,
                                    const int32_t* token_rows, int64_t width, int32_t num_tokens,
                                    float* x, cudaStream_t stream);

}  // namespace moe::kernels::cuda
