// KvCache (kv_cache.h).
#include "runtime/model/kv_cache.h"

#include "kernels/common/check.h"

namespace moe::runtime {

KvCache::KvCache(const ModelConfig& config, kernels::Backend& backend, int64_t max_seqs,
                 int64_t max_len)
    : max_seqs_(max_seqs), max_len_(max_len), dtype_(backend.kv_cache_dtype()) {
  MOE_CHECK_AS("config", max_len <= config.max_position_embeddings,
               "sequence length {} exceeds max_position_embeddings {}", max_len,
               config.max_position_embeddings);
  const size_t layer_bytes =
      static_cast<size_t>(max_seqs * max_len * config.kv_width() * kernels::kv_dtype_bytes(dtype_));
  layers_.resize(static_cast<size_t>(config.num_hidden_layers));
  for (LayerCache& c : layers_) {
    c.k = kernels::Buffer<unsigned char>(backend, layer_bytes);
    c.v = kernels::Buffer<unsigned char>(backend, layer_bytes);
    bytes_ += static_cast<int64_t>(c.k.size_bytes() + c.v.size_bytes());
  }
}

kernels::KvCacheView KvCache::view(int64_t layer) {
  LayerCache& c = layers_.at(static_cast<size_t>(layer));
  return {c.k.data(), c.v.data(), max_seqs_, max_len_, dtype_};
}

void KvCache::check_fits(int64_t cache_slot, int64_t end_position) const {
  MOE_CHECK(cache_slot >= 0 && cache_slot < max_seqs_, "cache slot {} out of range [0, {})",
            cache_slot, max_seqs_);
  MOE_CHECK_AS("input", end_position <= max_len_,
               "sequence of {} tokens exceeds the context of {} this run was sized for",
               end_position, max_len_);
}

}  // namespace moe::runtime
