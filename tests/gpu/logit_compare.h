// Logit comparisons of the whole-model GPU tests: argmax with its margin, and argmax agreement
// only where the reference is confident (top-1 beats top-2 by more than twice the largest logit
// difference actually measured between the two runs), so a near-tie cannot fail a test while a
// wrong kernel (differences comparable to the logits themselves) still does.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "runtime/io/npy.h"

namespace moe::test {

constexpr double kBf16LogitRelTol = 3e-2;  // max |diff| / max |reference|

struct ArgmaxAgreement {
  int64_t confident_rows = 0;
  int64_t agreeing_rows = 0;
};

// A logit row's argmax and by how much it beats the runner-up.
struct Top1 {
  int64_t id = 0;
  double value = 0;
  double margin = 0;
};
inline Top1 top1(const float* row, int64_t V) {
  Top1 t;
  for (int64_t v = 1; v < V; ++v) {
    if (row[v] > row[t.id]) t.id = v;
  }
  double second = -1e300;
  for (int64_t v = 0; v < V; ++v) {
    if (v != t.id) second = std::max(second, double(row[v]));
  }
  t.value = row[t.id];
  t.margin = t.value - second;
  return t;
}

// Over rows [rows, V] of two logit arrays: rows where `want`'s top-1 margin exceeds twice the
// largest |got - want| of the row, and how many of those have the same argmax in `got`.
inline ArgmaxAgreement confident_argmax(const runtime::NpyArray& got,
                                        const runtime::NpyArray& want) {
  ArgmaxAgreement a;
  const int64_t V = want.shape.back();
  const int64_t rows = static_cast<int64_t>(want.data.size()) / V;
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = got.data.data() + r * V;
    const float* w = want.data.data() + r * V;
    if (std::isnan(w[0])) continue;  // padding row of a shorter sequence
    double max_diff = 0;
    for (int64_t v = 0; v < V; ++v) max_diff = std::max(max_diff, std::abs(double(g[v]) - w[v]));
    const Top1 t = top1(w, V);
    if (t.margin <= 2 * max_diff) continue;
    ++a.confident_rows;
    a.agreeing_rows += top1(g, V).id == t.id ? 1 : 0;
  }
  return a;
}

// Share of rows (non-padding) whose argmax is the same in both arrays.
inline double top1_agreement(const runtime::NpyArray& got, const runtime::NpyArray& want) {
  const int64_t V = want.shape.back();
  const int64_t rows = static_cast<int64_t>(want.data.size()) / V;
  int64_t n = 0, same = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = want.data.data() + r * V;
    if (std::isnan(w[0])) continue;
    ++n;
    same += top1(got.data.data() + r * V, V).id == top1(w, V).id ? 1 : 0;
  }
  return n == 0 ? 1.0 : static_cast<double>(same) / static_cast<double>(n);
}

}  // namespace moe::test
