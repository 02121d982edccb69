// The KV cache of one rank: per layer, k and v of [max_seqs, max_len, kv_width] elements of the
// backend's KV dtype (fp32 on the CPU, bf16 on the GPU), allocated once. A sequence owns one slot
// (its cache_slot) and attention() appends its rows at their positions.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "runtime/io/config.h"

namespace moe::runtime {

class KvCache {
 public:
  KvCache(const ModelConfig& config, kernels::Backend& backend, int64_t max_seqs, int64_t max_len);

  kernels::KvCacheView view(int64_t layer);
  int64_t bytes() const { return bytes_; }
  int64_t max_seqs() const { return max_seqs_; }
  int64_t max_len() const { return max_len_; }
  // Throws unless slot `cache_slot` exists and can hold `end_position` tokens.
  void check_fits(int64_t cache_slot, int64_t end_position) const;

 private:
  struct LayerCache {
    kernels::Buffer<unsigned char> k, v;  // [max_seqs, max_len, kv_width] of dtype_
  };
  int64_t max_seqs_, max_len_;
  kernels::KvDtype dtype_;
  std::vector<LayerCache> layers_;
  int64_t bytes_ = 0;
};

}  // namespace moe::runtime
