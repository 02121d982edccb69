// StepGraphs (step_graphs.h).
#include "runtime/model/step_graphs.h"

#include "kernels/common/check.h"

namespace moe::runtime {

bool is_graph_step(const GraphStepShape& s, const kernels::DeviceGraphs* graphs) {
  return s.graphs_on && s.num_ranks == 1 && s.num_tokens > 0 && s.num_tokens <= s.max_tokens &&
         s.logit_rows > 0 && !s.routing_hooks &&
         (graphs == nullptr || graphs->experts_capturable(s.hidden, s.expert_inter));
}

bool StepGraphs::run(const Key& key, const std::function<std::vector<const void*>()>& fingerprint,
                     const std::function<void()>& forward) {
  kernels::DeviceGraphs* graphs = backend_.graphs();
  if (graphs == nullptr) {
    forward();
    return false;
  }
  Entry* entry = nullptr;
  for (Entry& e : entries_) {
    if (e.key == key) entry = &e;
  }
  if (entry == nullptr) {
    entries_.push_back({key, {}, -1});
    forward();
    entries_.back().fingerprint = fingerprint();
    return false;
  }
  if (entry->fingerprint != fingerprint()) {  // buffers moved: warm up again
    if (entry->handle >= 0) graphs->release(entry->handle);
    entry->handle = -1;
    forward();
    entry->fingerprint = fingerprint();
    return false;
  }
  if (entry->handle < 0) {
    graphs->begin_capture();
    try {
      forward();
      entry->handle = graphs->end_capture();
    } catch (...) {
      graphs->abort_capture();
      throw;
    }
    MOE_CHECK(entry->fingerprint == fingerprint(),
              "a buffer moved while the step was captured as a device graph");
    ++captures_;
  }
  graphs->launch(entry->handle);
  ++replays_;
  return true;
}

void StepGraphs::clear() noexcept {
  if (kernels::DeviceGraphs* graphs = backend_.graphs()) graphs->release_all();
  entries_.clear();
}

}  // namespace moe::runtime
