// The argument structs of the Backend ops (kernels/backend.h): attention batches, KV-cache views,
// weight views, expert weights and batches, route entries and routing tables. Tensors and
// metadata live in the backend's memory unless a field says "host"; shapes are in the comments,
// sizes in elements.
#pragma once

#include <cstdint>

#include "kernels/common/bf16.h"
#include "kernels/common/fp8.h"

namespace moe::kernels {

// One sequence's slice of an attention step: rows [row_begin, row_begin + num_new) of q/k/v are
// its new tokens at positions past_len .. past_len + num_new - 1; its cache lives in cache_slot.
struct AttentionSeq {
  int64_t row_begin = 0;
  int64_t num_new = 0;
  int64_t past_len = 0;
  int64_t cache_slot = 0;
};

// Element type of a KV cache. The CPU backend keeps fp32 (bit-faithful to an fp32 reference);
// the CUDA backend keeps bf16 (half the bytes, the largest buffer after the weights): keys and
// values are rounded to bf16 once, when appended, and read back as fp32.
enum class KvDtype : int32_t { kF32 = 0, kBF16 = 1 };
inline constexpr int64_t kv_dtype_bytes(KvDtype t) {
  return t == KvDtype::kF32 ? 4 : 2;
}

// One layer's KV cache: k and v are [num_slots, max_len, num_kv_heads * head_dim] each, of
// element type dtype, in the backend's memory.
struct KvCacheView {
  void* k = nullptr;
  void* v = nullptr;
  int64_t num_slots = 0;
  int64_t max_len = 0;
  KvDtype dtype = KvDtype::kF32;
};

// Attention geometry (GQA: query head h reads kv head h / (num_heads / num_kv_heads)).
struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};

// Element type of a weight matrix in backend memory.
enum class WeightDtype : int32_t { kBF16 = 0, kE4M3 = 1 };

// A weight matrix [rows, cols], row-major as checkpoints store it (y = x W^T): bf16 values, or
// e4m3 codes with one fp32 scale per 128 x 128 block, scales [ceil(rows / 128), ceil(cols / 128)]
// row-major (kernels/common/fp8.h: weight = e4m3 value x its block's scale). The shape is the
// op's to give; a bf16 pointer converts to a view implicitly.
struct WeightView {
  const void* data = nullptr;     // bf16 [rows, cols] or e4m3 codes [rows, cols]
  const float* scales = nullptr;  // e4m3 only
  WeightDtype dtype = WeightDtype::kBF16;

  WeightView() = default;
  WeightView(const bf16* w) : data(w) {}  // NOLINT(google-explicit-constructor)
  WeightView(const uint8_t* codes, const float* block_scales)
      : data(codes), scales(block_scales), dtype(WeightDtype::kE4M3) {}
  bool is_e4m3() const { return dtype == WeightDtype::kE4M3; }
  const bf16* bf16_data() const { return static_cast<const bf16*>(data); }
  const uint8_t* codes() const { return static_cast<const uint8_t*>(data); }
  // Rows [r0, ...) of a matrix with `cols` columns; an e4m3 view needs r0 % 128 == 0 (the
  // sub-matrix's blocks must be the parent's).
  WeightView rows_from(int64_t r0, int64_t cols) const {
    WeightView v = *this;
    if (is_e4m3()) {
      v.data = codes() + r0 * cols;
      v.scales = scales + (r0 / kFp8Block) * fp8_num_blocks(cols);
    } else {
      v.data = bf16_data() + r0 * cols;
    }
    return v;
  }
};
inline bool operator==(const WeightView& a, const WeightView& b) {
  return a.data == b.data && a.scales == b.scales && a.dtype == b.dtype;
}
inline bool operator!=(const WeightView& a, const WeightView& b) {
  return !(a == b);
}

// The q, k and v blocks of a stacked projection weight [q_width + 2 kv_width, hidden]: rows
// stacked without gaps, and for e4m3 the three scale grids stacked too (each block's 128-row
// groups start at its own first row), so the stack is one matrix exactly when both widths are
// multiples of 128.
struct QkvWeights {
  WeightView q, k, v;
};
inline QkvWeights split_qkv(WeightView w, int64_t hidden, int64_t q_width, int64_t kv_width) {
  QkvWeights p{w, w, w};
  if (!w.is_e4m3()) {
    p.k.data = w.bf16_data() + q_width * hidden;
    p.v.data = w.bf16_data() + (q_width + kv_width) * hidden;
    return p;
  }
  const int64_t scale_cols = fp8_num_blocks(hidden);
  p.k.data = w.codes() + q_width * hidden;
  p.k.scales = w.scales + fp8_num_blocks(q_width) * scale_cols;
  p.v.data = w.codes() + (q_width + kv_width) * hidden;
  p.v.scales = p.k.scales + fp8_num_blocks(kv_width) * scale_cols;
  return p;
}

// One expert's SwiGLU weights, row-major as checkpoints store them (y = x W^T).
struct ExpertWeights {
  WeightView gate;  // [inter, hidden]
  WeightView up;    // [inter, hidden]
  WeightView down;  // [hidden, inter]
};

// Entries [begin, begin + count) of a grouped-expert call all use these weights.
struct ExpertGroup {
  ExpertWeights weights;
  int64_t begin = 0;
  int64_t count = 0;
};

// One (destination row, top-k entry) of an expert-parallel exchange: the local slot on the
// destination rank that computes it (-1: the entry's expert lives on another rank) and its router
// weight. Travels with the hidden rows, k per row (parallel/dispatcher.h).
struct RouteEntry {
  int32_t local_slot = -1;
  float weight = 0.0f;
};

// One MoE layer's placement as flat arrays in backend memory, for routing on the device. The
// replicas of expert e are entries [replica_begin[e], replica_begin[e + 1]) of replica_rank /
// replica_slot, in the order of parallel::LayerPlacement::expert_slots[e]; rank_num_slots[d] is
// rank d's local slot count. `rank` is the source rank the table routes for (the replica split
// staggers by it).
struct RoutingTable {
  int32_t num_experts = 0;
  int32_t num_ranks = 0;
  int32_t rank = 0;
  int32_t max_local_slots = 0;              // max over ranks of rank_num_slots
  const int32_t* replica_begin = nullptr;   // [num_experts + 1]
  const int32_t* replica_rank = nullptr;    // [replica_begin[num_experts]]
  const int32_t* replica_slot = nullptr;    // [replica_begin[num_experts]]
  const int32_t* rank_num_slots = nullptr;  // [num_ranks]
};

// The expert work of one MoE layer on this rank: pairs [slot_begin[s], slot_begin[s + 1]) of
// row_index use local slot s's weights; out row p belongs to pair p. Computed on the device by
// the layout ops, so a decode step never copies it to the host.
struct ExpertBatch {
  const int32_t* row_index = nullptr;                // [max_pairs] x row of each pair
  const int32_t* slot_begin = nullptr;               // [num_slots + 1]
  const ExpertWeights* slot_weights = nullptr;       // [num_slots] pointer table in backend memory
  const ExpertWeights* host_slot_weights = nullptr;  // [num_slots] host copy of slot_weights
  int64_t num_slots = 0;
  int64_t max_pairs = 0;  // capacity: slot_begin[num_slots] <= max_pairs (sizes grids)
  // [num_slots + 1] host copy of slot_begin when the host already has the counts (it sized the
  // exchange with them), else nullptr: a device backend then reads slot_begin on the device.
  const int32_t* host_slot_begin = nullptr;
};

// The sequences of one attention step. A device backend sizes its launches from host_seqs when
// given (eager steps), else from (num_rows, shape, cache.max_len) alone, so that the step can be
// captured once as a device graph and replayed with new lengths.
struct AttentionBatch {
  const AttentionSeq* seqs = nullptr;       // [num_seqs]
  const AttentionSeq* host_seqs = nullptr;  // [num_seqs] host copy of seqs, or nullptr
  int64_t num_seqs = 0;
  int64_t num_rows = 0;  // new rows in all: q/k/v/out have num_rows rows
};

}  // namespace moe::kernels
