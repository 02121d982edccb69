// The weights one rank holds, in backend memory: the dense replica (embeddings, attention, norms,
// routers, lm_head, dense MLP layers) and the experts of its placement slots, plus each MoE
// layer's slot table (the experts' weight views in local-slot order, on the host and in backend
// memory). Matrices stay as the WeightSource hands them out: bf16, or e4m3 codes with their
// 128 x 128 block scales (never widened). Only tensors this rank holds are read; apply_placement
// moves expert weights (codes and scales) between ranks when the placement changes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"
#include "runtime/io/config.h"
#include "runtime/io/weights.h"
#include "runtime/model/arithmetic.h"

namespace moe::runtime {

// One weight matrix [rows, cols] in backend memory as stored: bf16 values, or e4m3 codes with
// their block scales [ceil(rows / 128), ceil(cols / 128)].
struct WeightBuffer {
  kernels::WeightDtype dtype = kernels::WeightDtype::kBF16;
  kernels::Buffer<uint8_t> data;  // bf16 (2 bytes each) or e4m3 codes
  kernels::Buffer<float> scales;  // e4m3 only
  kernels::WeightView view() const;
  int64_t size_bytes() const {
    return static_cast<int64_t>(data.size_bytes() + scales.size_bytes());
  }
};

struct ExpertSlot {
  int logical = -1;             // the expert this slot holds
  WeightBuffer gate, up, down;  // [I, H], [I, H], [H, I]
};

struct LayerWeights {
  bool is_moe = false;
  kernels::Buffer<bf16> input_norm, post_norm;  // [H]
  // q_proj, k_proj, v_proj stacked: [q_width + 2 kv_width, H], q rows first, then k, then v
  // (e4m3: the three scale grids stacked too, kernels::split_qkv).
  WeightBuffer qkv_proj;
  WeightBuffer o_proj;                   // [H, q_width]
  kernels::Buffer<bf16> q_norm, k_norm;  // [head_dim]
  WeightBuffer router;                   // [E, H] (MoE)
  // The element types of this layer's expert gate, up and down (the same for every expert).
  kernels::WeightDtype expert_dtypes[3] = {};
  std::vector<ExpertSlot> experts;                           // this rank's local slots (MoE)
  std::vector<kernels::ExpertWeights> slot_weights;          // experts' views, slot order
  kernels::Buffer<kernels::ExpertWeights> slot_weights_dev;  // the same in backend memory
  WeightBuffer mlp_gate, mlp_up;                             // [dense_inter, H] (dense)
  WeightBuffer mlp_down;                                     // [H, dense_inter] (dense)
};

// What apply_placement moved on this rank.
struct PlacementChange {
  int64_t experts_received = 0;  // (layer, expert) slots filled from another rank
  int64_t bytes_received = 0;    // their weight bytes as stored (gate, up, down; e4m3: + scales)
  int64_t experts_kept = 0;      // slots whose weights this rank already held
};

class ModelWeights {
 public:
  using Progress = std::function<void(int64_t done_bytes, int64_t total_bytes)>;

  // Reads the replica and the experts of `rank`'s slots under `placement`; `progress` (nullable)
  // is called after every tensor.
  ModelWeights(const ModelConfig& config, const parallel::Placement& placement, int rank,
               kernels::Backend& backend, WeightSource& source, const Progress& progress = {});

  const LayerWeights& layer(int64_t l) const { return layers_.at(static_cast<size_t>(l)); }
  const bf16* embed() const { return embed_.data(); }                              // [V, H]
  const bf16* lm_head() const { return tied_ ? embed_.data() : lm_head_.data(); }  // [V, H]
  const bf16* final_norm() const { return final_norm_.data(); }                    // [H]
  // Sizes (runtime/model/arithmetic.h): dense replica, expert slots and the bytes they take as
  // held (bf16 and e4m3 with scales, as loaded).
  const RankWeights& sizes() const { return sizes_; }

  // Moves expert weights from `from` to `next` (same layers, experts and ranks; slot counts may
  // change): a slot whose expert this rank already holds keeps its buffers, every other slot
  // receives its expert's weights from a rank that held it, one all_to_all_v per MoE layer that
  // changes. Collective; every rank passes the same placements.
  PlacementChange apply_placement(const parallel::Placement& from, const parallel::Placement& next,
                                  parallel::Communicator& comm);

 private:
  kernels::Buffer<bf16> load(WeightSource& w, const std::string& name,
                             const std::vector<int64_t>& shape);
  // A weight matrix [rows, cols] in the element type the source hands it out in; `expected`
  // (when set) is the type it must have (an expert part of its layer).
  WeightBuffer load_matrix(WeightSource& w, const std::string& name, int64_t rows, int64_t cols,
                           const kernels::WeightDtype* expected = nullptr);
  // Matrices [rows_i, cols] stacked by rows into one buffer, in the order given (one dtype).
  WeightBuffer load_stacked(WeightSource& w,
                            const std::vector<std::pair<std::string, int64_t>>& parts, int64_t cols,
                            const kernels::WeightDtype* expected = nullptr);
  // Uploads `count` host elements into a new buffer and reports progress.
  template <class T>
  kernels::Buffer<T> upload(const T* host, size_t count);
  void load_layer(WeightSource& w, const parallel::Placement& placement, int64_t l);
  // The experts this rank sends (in destination order, then the destination's slots) and the
  // counts per peer, for one MoE layer moving from `from` to `to`.
  struct ExpertMoves {
    std::vector<const ExpertSlot*> to_send;
    std::vector<int64_t> send_counts, recv_counts;  // [N] experts
    int64_t moves = 0;                              // slots filled from elsewhere, all ranks
  };
  ExpertMoves plan_moves(const LayerWeights& L, const parallel::LayerPlacement& from,
                         const parallel::LayerPlacement& to, int num_ranks) const;
  // One MoE layer's part of apply_placement.
  PlacementChange move_experts(LayerWeights& layer, const parallel::LayerPlacement& from,
                               const parallel::LayerPlacement& to, parallel::Communicator& comm);
  // Rebuilds every MoE layer's slot tables (after loading and after apply_placement).
  void refresh_slot_tables();
  // The bytes of every buffer held (sizes_'s byte counts).
  void measure_held_bytes();

  ModelConfig config_;
  kernels::Backend& backend_;
  int rank_;
  bool tied_;
  RankWeights sizes_;
  kernels::Buffer<bf16> embed_, lm_head_, final_norm_;
  std::vector<LayerWeights> layers_;
  int64_t done_bytes_ = 0;
  Progress progress_;
};

}  // namespace moe::runtime
