// Builds the grouped-SwiGLU plan and the cuBLAS grouped-GEMM argument arrays (host-only; see the
// layout drawing in grouped_gemm_plan.h).
#include "kernels/cuda/grouped_gemm_plan.h"

#include <algorithm>
#include <climits>
#include <numeric>

#include "kernels/common/check.h"

namespace moe::kernels::cuda {

int64_t grouped_row_align(int64_t hidden, int64_t inter) {
  MOE_CHECK(hidden > 0 && inter > 0, "grouped_row_align: hidden {} and inter {} must be > 0",
            hidden, inter);
  const int64_t a = 8 / std::gcd<int64_t>(8, hidden);
  const int64_t b = 8 / std::gcd<int64_t>(8, inter);
  return std::lcm(a, b);
}

GroupedSwigluPlan plan_grouped_swiglu(const ExpertGroup* groups, int64_t num_groups,
                                      const int32_t* row_index, int64_t hidden, int64_t inter) {
  MOE_CHECK(num_groups >= 0, "grouped_expert_swiglu: num_groups {} < 0", num_groups);
  MOE_CHECK(hidden > 0 && inter > 0 && hidden < INT_MAX && inter < INT_MAX,
            "grouped_expert_swiglu: hidden {} / inter {} out of range", hidden, inter);
  GroupedSwigluPlan plan;
  plan.hidden = hidden;
  plan.inter = inter;
  plan.row_align = grouped_row_align(hidden, inter);

  // Overlap check on the non-empty groups sorted by begin: cuBLAS requires disjoint outputs, and
  // an entry computed twice would mean the caller's layout is wrong.
  std::vector<int64_t> order;
  for (int64_t g = 0; g < num_groups; ++g) {
    const ExpertGroup& grp = groups[g];
    MOE_CHECK(grp.begin >= 0 && grp.count >= 0,
              "grouped_expert_swiglu: group {} has begin {} count {}", g, grp.begin, grp.count);
    MOE_CHECK(grp.count < INT_MAX, "grouped_expert_swiglu: group {} has {} rows (> INT_MAX)", g,
              grp.count);
    if (grp.count == 0) continue;
    MOE_CHECK(grp.weights.gate.data != nullptr && grp.weights.up.data != nullptr &&
                  grp.weights.down.data != nullptr,
              "grouped_expert_swiglu: group {} has {} rows but missing weights", g, grp.count);
    MOE_CHECK(
        !grp.weights.gate.is_e4m3() && !grp.weights.up.is_e4m3() && !grp.weights.down.is_e4m3(),
        "grouped_expert_swiglu: group {} has e4m3 weights (the grouped GEMM takes bf16)", g);
    order.push_back(g);
  }
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return groups[a].begin < groups[b].begin; });
  for (size_t i = 1; i < order.size(); ++i) {
    const ExpertGroup& prev = groups[order[i - 1]];
    const ExpertGroup& cur = groups[order[i]];
    MOE_CHECK(prev.begin + prev.count <= cur.begin,
              "grouped_expert_swiglu: groups {} and {} share entries ([{}, {}) and [{}, {}))",
              order[i - 1], order[i], prev.begin, prev.begin + prev.count, cur.begin,
              cur.begin + cur.count);
  }

  int64_t next = 0;
  for (int64_t g = 0; g < num_groups; ++g) {
    const ExpertGroup& grp = groups[g];
    if (grp.count == 0) continue;
    const int64_t first = (next + plan.row_align - 1) / plan.row_align * plan.row_align;
    plan.gather_src.resize(static_cast<size_t>(first), -1);
    plan.scatter_dst.resize(static_cast<size_t>(first), -1);
    for (int64_t p = grp.begin; p < grp.begin + grp.count; ++p) {
      MOE_CHECK(row_index[p] >= 0, "grouped_expert_swiglu: row_index[{}] = {} < 0", p,
                row_index[p]);
      plan.gather_src.push_back(row_index[p]);
      MOE_CHECK(p < INT32_MAX, "grouped_expert_swiglu: entry {} does not fit int32", p);
      plan.scatter_dst.push_back(static_cast<int32_t>(p));
    }
    plan.weights.push_back(grp.weights);
    plan.compact_begin.push_back(first);
    plan.rows.push_back(static_cast<int32_t>(grp.count));
    plan.num_entries += grp.count;
    plan.out_rows = std::max(plan.out_rows, grp.begin + grp.count);
    next = first + grp.count;
  }
  plan.num_compact_rows = next;
  MOE_CHECK(plan.num_compact_rows < INT_MAX, "grouped_expert_swiglu: {} rows do not fit int",
            plan.num_compact_rows);
  return plan;
}

GroupedGemmArgs grouped_gemm_args(const GroupedSwigluPlan& plan, Projection projection,
                                  const GroupedScratch& scratch) {
  const int64_t H = plan.hidden, I = plan.inter;
  const bool down = projection == Projection::kDown;
  const int m = static_cast<int>(down ? H : I);  // output width
  const int k = static_cast<int>(down ? I : H);  // input width
  const auto* in_base = static_cast<const unsigned char*>(down ? scratch.act : scratch.x);
  auto* out_base = static_cast<unsigned char*>(
      down ? scratch.down : (projection == Projection::kGate ? scratch.gate : scratch.up));
  constexpr int64_t kElemBytes = 2;  // bf16

  GroupedGemmArgs args;
  const size_t G = static_cast<size_t>(plan.num_gemm_groups());
  args.m.assign(G, m);
  args.k.assign(G, k);
  args.lda.assign(G, k);
  args.ldb.assign(G, k);
  args.ldc.assign(G, m);
  args.group_size.assign(G, 1);
  args.alpha.assign(G, 1.0f);
  args.beta.assign(G, 0.0f);
  args.n.resize(G);
  args.a.resize(G);
  args.b.resize(G);
  args.c.resize(G);
  for (size_t g = 0; g < G; ++g) {
    const ExpertWeights& w = plan.weights[g];
    args.n[g] = plan.rows[g];
    args.a[g] = projection == Projection::kGate ? w.gate.data
                : projection == Projection::kUp ? w.up.data
                                                : w.down.data;
    args.b[g] = in_base + plan.compact_begin[g] * k * kElemBytes;
    args.c[g] = out_base + plan.compact_begin[g] * m * kElemBytes;
  }
  return args;
}

}  // namespace moe::kernels::cuda
