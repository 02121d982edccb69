// Seeded data and the reference of the all-to-all benchmark (bench_dispatch.cpp), nccl-tests
// style: every rank regenerates what it must end up with from (seed, rank, token, column) and
// counts the elements that differ, without gathering anything. Values are multiples of 1/8 with
// weights multiples of 1/8 and expert scales in {1, 2, 3}, so every fp32 sum the combine forms
// is exact in any order: a correct exchange has #wrong == 0 exactly, whatever the rank count.
// Rows in a narrower wire type (bf16 partial rows, fp8 dispatched rows) round at the points the
// dispatcher rounds them, and the stand-in expert's output is rounded to bf16 where the runtime's
// experts compute in bf16 (bf16 and fp8 rows): a2a_expected_on_wire forms the same fp32
// operations in the same order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/common/bf16.h"
#include "kernels/common/moe_wire.h"

namespace moe::bench {

// SplitMix64: a deterministic hash of the element's coordinates.
inline uint64_t a2a_mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Hidden element (rank, token, col): one of -1, -7/8, ..., 7/8, 1.
inline float a2a_hidden_value(uint64_t seed, int rank, int64_t token, int64_t col) {
  const uint64_t h =
      a2a_mix(seed ^ a2a_mix((static_cast<uint64_t>(rank) << 48) ^
                             (static_cast<uint64_t>(token) << 20) ^ static_cast<uint64_t>(col)));
  return static_cast<float>(static_cast<int>(h % 17) - 8) / 8.0f;
}

// The stand-in expert computes out = scale(expert) * in, rounded to bf16 when the rows are bf16
// or fp8 (bf16 compute: a2a_expert_out).
inline float a2a_expert_scale(int expert) {
  return static_cast<float>(1 + expert % 3);
}

// The stand-in expert's output value for input `in`: scale(expert) * in, stored as bf16 when the
// dispatch wire type says the runtime computes in bf16 (everything but fp32 rows), as the
// runtime's bf16 experts store their output.
inline float a2a_expert_out(int expert, float in, kernels::WireDtype dispatch) {
  const float out = a2a_expert_scale(expert) * in;
  return dispatch == kernels::WireDtype::kF32 ? out : round_to_bf16(out);
}

// One rank's routing: top_k distinct experts per token, weights in {1/8, 2/8, 3/8, 4/8}.
struct A2aRouting {
  int top_k = 0;
  std::vector<int32_t> ids;    // [tokens, top_k]
  std::vector<float> weights;  // [tokens, top_k]
};

inline A2aRouting a2a_routing(uint64_t seed, int rank, int64_t tokens, int experts, int top_k) {
  A2aRouting r;
  r.top_k = top_k;
  r.ids.resize(static_cast<size_t>(tokens * top_k));
  r.weights.resize(r.ids.size());
  std::vector<int32_t> pool(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t) {
    std::iota(pool.begin(), pool.end(), 0);
    uint64_t h =
        a2a_mix(seed ^ 0x5EEDull ^ (static_cast<uint64_t>(rank) << 40) ^ static_cast<uint64_t>(t));
    for (int j = 0; j < top_k; ++j) {  // partial Fisher-Yates: distinct experts
      h = a2a_mix(h);
      const size_t pick = static_cast<size_t>(j) + static_cast<size_t>(h % (experts - j));
      std::swap(pool[static_cast<size_t>(j)], pool[pick]);
      r.ids[static_cast<size_t>(t * top_k + j)] = pool[static_cast<size_t>(j)];
      r.weights[static_cast<size_t>(t * top_k + j)] = static_cast<float>(1 + (h >> 32) % 4) / 8.0f;
    }
  }
  return r;
}

// What the combine must return for token t of `rank`: h[t][c] * sum_j w_j * scale(e_j).
inline float a2a_token_factor(const A2aRouting& r, int64_t t) {
  float f = 0.0f;
  for (int j = 0; j < r.top_k; ++j) {
    const size_t i = static_cast<size_t>(t * r.top_k + j);
    f += r.weights[i] * a2a_expert_scale(r.ids[i]);
  }
  return f;
}

// Elements of y [tokens, hidden] that differ from the reference.
inline int64_t a2a_count_wrong(const float* y, uint64_t seed, int rank, const A2aRouting& r,
                               int64_t tokens, int64_t hidden) {
  int64_t wrong = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    const float f = a2a_token_factor(r, t);
    for (int64_t c = 0; c < hidden; ++c) {
      wrong += y[t * hidden + c] != a2a_hidden_value(seed, rank, t, c) * f ? 1 : 0;
    }
  }
  return wrong;
}

// What the combine of the dispatcher gives for token t of `rank` (row [hidden] into out) when rows
// travel as `dispatch` and partial rows come back as `combine` (rank_of_expert[e]: the rank holding
// expert e, one replica each): per destination rank in ascending order, the fp32 sum in top-k order
// of w * a2a_expert_out(x), x the row as that rank received it (own rows stay fp32 but in bf16
// dispatch, where every row reaches the experts as a bf16 value); partial rows from
// other ranks rounded to `combine`; then their sum in destination order.
inline void a2a_expected_on_wire(uint64_t seed, int rank, const A2aRouting& r, int64_t t,
                                 int64_t hidden, kernels::WireDtype dispatch,
                                 kernels::WireDtype combine, const std::vector<int>& rank_of_expert,
                                 float* out) {
  namespace wire = kernels::wire;
  std::vector<float> x(static_cast<size_t>(hidden)), sent(x.size());
  for (int64_t c = 0; c < hidden; ++c)
    x[static_cast<size_t>(c)] = a2a_hidden_value(seed, rank, t, c);
  std::vector<unsigned char> row(static_cast<size_t>(wire::row_bytes(dispatch, hidden)));
  if (dispatch == kernels::WireDtype::kFP8) {
    for (int64_t b = 0; b < (hidden + kernels::kFp8Block - 1) / kernels::kFp8Block; ++b) {
      wire::encode_fp8_block(x.data(), row.data(), hidden, b);
    }
  } else {
    wire::encode_columns(dispatch, x.data(), row.data(), 0, hidden);
  }
  for (int64_t c = 0; c < hidden; ++c)
    sent[static_cast<size_t>(c)] = wire::decode(dispatch, row.data(), hidden, c);
  std::vector<int> dests;
  for (int j = 0; j < r.top_k; ++j)
    dests.push_back(rank_of_expert[r.ids[static_cast<size_t>(t * r.top_k + j)]]);
  std::sort(dests.begin(), dests.end());
  dests.erase(std::unique(dests.begin(), dests.end()), dests.end());
  for (int64_t c = 0; c < hidden; ++c) {
    float total = 0.0f;
    for (size_t di = 0; di < dests.size(); ++di) {
      const int d = dests[di];
      const bool as_sent = d != rank || dispatch == kernels::WireDtype::kBF16;
      const float in = as_sent ? sent[static_cast<size_t>(c)] : x[static_cast<size_t>(c)];
      float partial = 0.0f;
      bool first = true;
      for (int j = 0; j < r.top_k; ++j) {
        const size_t i = static_cast<size_t>(t * r.top_k + j);
        if (rank_of_expert[r.ids[i]] != d) continue;
        const float term = r.weights[i] * a2a_expert_out(r.ids[i], in, dispatch);
        partial = first ? term : partial + term;
        first = false;
      }
      if (d != rank && combine == kernels::WireDtype::kBF16) partial = round_to_bf16(partial);
      total = di == 0 ? partial : total + partial;
    }
    out[c] = total;
  }
}

// Elements of y [tokens, hidden] that differ from a2a_expected_on_wire.
inline int64_t a2a_count_wrong_on_wire(const float* y, uint64_t seed, int rank, const A2aRouting& r,
                                       int64_t tokens, int64_t hidden, kernels::WireDtype dispatch,
                                       kernels::WireDtype combine,
                                       const std::vector<int>& rank_of_expert) {
  std::vector<float> want(static_cast<size_t>(hidden));
  int64_t wrong = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    a2a_expected_on_wire(seed, rank, r, t, hidden, dispatch, combine, rank_of_expert, want.data());
    for (int64_t c = 0; c < hidden; ++c)
      wrong += y[t * hidden + c] != want[static_cast<size_t>(c)] ? 1 : 0;
  }
  return wrong;
}

// Byte i of what rank src sends rank dst in the raw exchange.
inline unsigned char a2a_raw_byte(uint64_t seed, int src, int dst, int64_t i) {
  return static_cast<unsigned char>(a2a_mix(seed ^ (static_cast<uint64_t>(src) << 56) ^
                                            (static_cast<uint64_t>(dst) << 48) ^
                                            static_cast<uint64_t>(i)) &
                                    0xFF);
}

}  // namespace moe::bench
