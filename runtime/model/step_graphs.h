// Single-rank decode steps as device graphs: every op's metadata is in backend memory, so the
// forward up to the logits can be captured once per batch shape and replayed with new values.
// The first step of a shape runs eagerly (buffers grow to size), the second is captured, later
// ones replay; a graph whose buffers have moved since (a larger batch grew them, the backend's
// scratch moved) is released and captured again. On a backend without graphs a graph step runs
// eagerly, the same ops with the same metadata.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/backend.h"

namespace moe::runtime {

// The one condition under which a step runs as a graph step.
struct GraphStepShape {
  bool graphs_on = false;      // --graph on
  int num_ranks = 1;           // graphs are single-rank (an exchange sizes itself on the host)
  int64_t num_tokens = 0;      // 1 .. max_tokens
  int64_t max_tokens = 0;      // the most tokens whose slot counts stay on the device
  int64_t logit_rows = 0;      // at least one
  bool routing_hooks = false;  // hooks read the routing on the host
  int64_t hidden = 0, expert_inter = 0;  // the expert op must run with device-only counts
};
bool is_graph_step(const GraphStepShape& s, const kernels::DeviceGraphs* graphs);

class StepGraphs {
 public:
  explicit StepGraphs(kernels::Backend& backend) : backend_(backend) {}
  ~StepGraphs() { clear(); }
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  using Key = std::array<int64_t, 3>;  // tokens, sequences, logit rows
  // Runs `forward` eagerly, or captures it, or replays its graph (see above). `fingerprint` lists
  // every buffer address the forward touches. Returns true when the step was a replay (the host
  // code of `forward` did not run).
  bool run(const Key& key, const std::function<std::vector<const void*>()>& fingerprint,
           const std::function<void()>& forward);
  // Releases every graph (the weights or placement they captured changed).
  void clear() noexcept;
  int64_t captures() const { return captures_; }
  int64_t replays() const { return replays_; }

 private:
  struct Entry {
    Key key;
    std::vector<const void*> fingerprint;
    int64_t handle = -1;  // backend graph; -1: warmed up, not captured yet
  };
  kernels::Backend& backend_;
  std::vector<Entry> entries_;
  int64_t captures_ = 0, replays_ = 0;
};

}  // namespace moe::runtime
