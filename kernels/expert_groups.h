// Expert work described on the host as groups of consecutive pairs (group g covers pairs
// [begin, begin + count) with its weights), the way calibration, benchmarks and tests describe
// it, turned into the ExpertBatch the expert op takes: the slot tables copied into backend memory
// once, their host copies kept beside them. The dispatcher builds its ExpertBatch on the device.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/check.h"

namespace moe::kernels {

class HostExpertGroups {
 public:
  // `groups` must tile the pairs in order, the first beginning at 0; row_index [capacity] (host).
  // host_counts: give the op the host copy of the slot counts, as a prefill does; false: counts
  // in backend memory only, as a decode step runs. capacity (>= the pairs; -1: the pairs) is the
  // batch's max_pairs, which sizes a device op's grids when the counts are on the device only.
  HostExpertGroups(Backend& backend, const ExpertGroup* groups, int64_t num_groups,
                   const int32_t* row_index, bool host_counts = true, int64_t capacity = -1)
      : slot_begin_{0} {
    for (int64_t g = 0; g < num_groups; ++g) {
      MOE_CHECK(groups[g].begin == slot_begin_.back() && groups[g].count >= 0,
                "expert group {} begins at pair {}, expected {}", g, groups[g].begin,
                slot_begin_.back());
      slot_begin_.push_back(static_cast<int32_t>(groups[g].begin + groups[g].count));
      weights_.push_back(groups[g].weights);
    }
    const int64_t pairs = capacity < 0 ? slot_begin_.back() : capacity;
    MOE_CHECK(pairs >= slot_begin_.back(), "expert groups: capacity {} below the {} pairs", pairs,
              slot_begin_.back());
    d_slot_begin_.assign(backend, slot_begin_.data(), slot_begin_.size());
    d_row_index_.assign(backend, row_index, static_cast<size_t>(pairs));
    d_weights_.assign(backend, weights_.data(), weights_.size());
    batch_.row_index = d_row_index_.data();
    batch_.slot_begin = d_slot_begin_.data();
    batch_.slot_weights = d_weights_.data();
    batch_.host_slot_weights = weights_.data();
    batch_.num_slots = num_groups;
    batch_.max_pairs = pairs;
    batch_.host_slot_begin = host_counts ? slot_begin_.data() : nullptr;
  }
  HostExpertGroups(const HostExpertGroups&) = delete;  // batch() points into it
  HostExpertGroups& operator=(const HostExpertGroups&) = delete;

  const ExpertBatch& batch() const { return batch_; }

 private:
  std::vector<int32_t> slot_begin_;  // [groups + 1]
  std::vector<ExpertWeights> weights_;
  Buffer<int32_t> d_slot_begin_, d_row_index_;
  Buffer<ExpertWeights> d_weights_;
  ExpertBatch batch_;
};

}  // namespace moe::kernels
