// Sampling as HF transformers orders its warpers: temperature, then top-k, then top-p, then a
// draw from the renormalized distribution. Candidates are sorted by (probability desc, id asc),
// so the outcome is a pure function of the logits and the draw.
#include "runtime/model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/common/check.h"
#include "kernels/common/hash.h"
#include "kernels/cpu/host.h"

namespace moe::runtime {

void SamplingParams::validate() const {
  MOE_CHECK_AS("input", std::isfinite(temperature) && temperature >= 0,
               "--temperature must be >= 0, got {}", temperature);
  MOE_CHECK_AS("input", top_k >= 0, "--top-k must be >= 0, got {}", top_k);
  MOE_CHECK_AS("input", top_p > 0 && top_p <= 1, "--top-p must be in (0, 1], got {}", top_p);
}

double sampling_uniform(uint64_t seed, int64_t sequence, int64_t step) {
  const uint64_t x = splitmix64(splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(sequence)) ^
                                static_cast<uint64_t>(step));
  return static_cast<double>(x >> 11) * 0x1.0p-53;
}

int32_t sample_token(std::span<const float> logits, const SamplingParams& params, double uniform) {
  MOE_CHECK_AS("input", !logits.empty(), "sampling from an empty logits row");
  if (params.temperature == 0)  // the argmax `generate --tokens` has always used
    return static_cast<int32_t>(
        kernels::argmax(logits.data(), static_cast<int64_t>(logits.size())));
  const int64_t vocab = static_cast<int64_t>(logits.size());
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  const int64_t keep_k = params.top_k > 0 ? std::min(params.top_k, vocab) : vocab;
  auto more_likely = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  std::partial_sort(order.begin(), order.begin() + keep_k, order.end(), more_likely);
  order.resize(static_cast<size_t>(keep_k));

  // softmax of logits / T over the kept tokens, in double
  const double max_scaled = logits[order[0]] / params.temperature;
  std::vector<double> p(order.size());
  double sum = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    p[i] = std::exp(logits[order[i]] / params.temperature - max_scaled);
    sum += p[i];
  }
  // top-p: the shortest prefix whose probability reaches top_p (at least one token)
  size_t keep = order.size();
  if (params.top_p < 1) {
    double cumulative = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      cumulative += p[i] / sum;
      if (cumulative >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_sum = 0;
  for (size_t i = 0; i < keep; ++i) kept_sum += p[i];
  const double target = uniform * kept_sum;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (target < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace moe::runtime
