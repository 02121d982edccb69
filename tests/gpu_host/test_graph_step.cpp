// The one condition under which a step runs as a device graph (runtime/model/step_graphs.h):
// every term can turn it off, and a backend whose expert op cannot run on device-only counts for
// the model's widths (the CUDA small-expert kernel's shape rule, kernels/cuda/fused_math.h)
// keeps such a model's decode eager instead of failing during capture.
#include <gtest/gtest.h>

#include "kernels/cuda/fused_math.h"
#include "runtime/model/step_graphs.h"

namespace moe::runtime {
namespace {

// DeviceGraphs that only answers the shape question, by the CUDA backend's rule.
class ShapeOnlyGraphs final : public kernels::DeviceGraphs {
 public:
  int64_t memory_generation() const override { return 0; }
  bool experts_capturable(int64_t hidden, int64_t inter) const override {
    return kernels::cuda::expert_small_shape_ok(hidden, inter);
  }
  void begin_capture() override {}
  int64_t end_capture() override { return 0; }
  void abort_capture() noexcept override {}
  void launch(int64_t) override {}
  void release(int64_t) noexcept override {}
  void release_all() noexcept override {}
};

GraphStepShape decode_step() {
  GraphStepShape s;
  s.graphs_on = true;
  s.num_ranks = 1;
  s.num_tokens = 8;
  s.max_tokens = 64;
  s.logit_rows = 8;
  s.hidden = 2048;
  s.expert_inter = 768;
  return s;
}

TEST(GraphStep, EveryTermOfTheConditionCanTurnItOff) {
  const ShapeOnlyGraphs graphs;
  EXPECT_TRUE(is_graph_step(decode_step(), &graphs));
  EXPECT_TRUE(is_graph_step(decode_step(), nullptr)) << "no graphs: the same step runs eagerly";
  auto off = [&](auto change) {
    GraphStepShape s = decode_step();
    change(s);
    return !is_graph_step(s, &graphs) && !is_graph_step(s, nullptr);
  };
  EXPECT_TRUE(off([](GraphStepShape& s) { s.graphs_on = false; }));
  EXPECT_TRUE(off([](GraphStepShape& s) { s.num_ranks = 2; }));
  EXPECT_TRUE(off([](GraphStepShape& s) { s.num_tokens = 0; }));
  EXPECT_TRUE(off([](GraphStepShape& s) { s.num_tokens = 65; }));
  EXPECT_TRUE(off([](GraphStepShape& s) { s.logit_rows = 0; }));
  EXPECT_TRUE(off([](GraphStepShape& s) { s.routing_hooks = true; }));
  GraphStepShape at_limit = decode_step();
  at_limit.num_tokens = 64;
  EXPECT_TRUE(is_graph_step(at_limit, &graphs));
}

TEST(GraphStep, WidthsTheDeviceExpertOpCannotTakeRunEagerly) {
  const ShapeOnlyGraphs graphs;
  for (const auto& [hidden, inter, ok] :
       {std::tuple{64, 32, true}, std::tuple{60, 32, false}, std::tuple{64, 36, false},
        std::tuple{2048, 768, true}, std::tuple{32768, 64, false}}) {
    GraphStepShape s = decode_step();
    s.hidden = hidden;
    s.expert_inter = inter;
    EXPECT_EQ(is_graph_step(s, &graphs), ok) << "hidden " << hidden << ", expert width " << inter;
    EXPECT_TRUE(is_graph_step(s, nullptr)) << "a backend without graphs takes any width";
  }
}

}  // namespace
}  // namespace moe::runtime
