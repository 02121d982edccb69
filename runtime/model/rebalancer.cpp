// Rebalancer: window sums -> one sum over ranks -> per-layer strategy -> apply_placement. The
// fitted and moved figures are recorded here; measured balancedness comes from the run's metrics.
#include "runtime/model/rebalancer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "kernels/common/check.h"
#include "parallel/placement_strategies.h"

namespace moe::runtime {
namespace {

// Strategies number ranks arbitrarily; the loads do not care which rank gets which list. Give
// each new list to the old rank that already holds most of its experts (greedy on the largest
// overlap), so fewer weights move.
parallel::RankLists keep_most_in_place(parallel::RankLists lists,
                                       const std::vector<std::vector<int>>& old) {
  const size_t n = lists.size();
  std::vector<std::vector<int64_t>> overlap(n, std::vector<int64_t>(n, 0));
  for (size_t i = 0; i < n; ++i) {
    for (size_t r = 0; r < n; ++r) {
      for (int e : lists[i]) {
        overlap[i][r] += std::find(old[r].begin(), old[r].end(), e) != old[r].end();
      }
    }
  }
  std::vector<int> rank_of(n, -1);
  std::vector<bool> taken(n, false);
  for (size_t round = 0; round < n; ++round) {
    int64_t best = -1;
    size_t bi = 0, br = 0;
    for (size_t i = 0; i < n; ++i) {
      if (rank_of[i] >= 0) continue;
      for (size_t r = 0; r < n; ++r) {
        if (!taken[r] && overlap[i][r] > best) {
          best = overlap[i][r];
          bi = i;
          br = r;
        }
      }
    }
    rank_of[bi] = static_cast<int>(br);
    taken[br] = true;
  }
  parallel::RankLists out(n);
  for (size_t i = 0; i < n; ++i) out[static_cast<size_t>(rank_of[i])] = std::move(lists[i]);
  return out;
}

}  // namespace

Rebalancer::Rebalancer(const RebalanceConfig& config, Model& model, parallel::Communicator& comm)
    : config_(config), model_(model), comm_(comm) {
  MOE_CHECK_AS("config", config_.every >= 1 && config_.window >= 1,
               "rebalance: every and window must be >= 1 (got {}, {})", config_.every,
               config_.window);
  model_.set_step_observer([this](int64_t step, const StepResult& r) { on_step(step, r); });
}

double measured_balancedness(const std::vector<parallel::LayerLoad>& summed) {
  double sum = 0;
  int n = 0;
  for (const parallel::LayerLoad& l : summed) {
    if (l.tokens_per_rank.empty()) continue;  // dense layer
    sum += l.balancedness();
    ++n;
  }
  return n > 0 ? sum / n : -1;
}

void Rebalancer::finish() {
  if (!events_.empty()) {
    since_event_.resize(static_cast<size_t>(model_.config().num_hidden_layers));
    const double after = measured_balancedness(parallel::sum_over_ranks(comm_, since_event_));
    events_.back().balancedness_after = steps_since_event_ > 0 ? after : -1;
  }
  since_event_.clear();
  steps_since_event_ = 0;
}

void Rebalancer::on_step(int64_t step, const StepResult& result) {
  window_.push_back(result.loads);
  while (static_cast<int64_t>(window_.size()) > config_.window) window_.pop_front();
  if (since_event_.empty()) since_event_.resize(result.loads.size());
  for (size_t l = 0; l < result.loads.size(); ++l) since_event_[l] += result.loads[l];
  ++steps_since_event_;
  if ((step + 1) % config_.every != 0) return;
  const auto t0 = std::chrono::steady_clock::now();
  finish();  // the previous event's steps end here

  const ModelConfig& mc = model_.config();
  std::vector<parallel::LayerLoad> sum(window_.front().size());
  for (const auto& loads : window_) {
    for (size_t l = 0; l < loads.size(); ++l) sum[l] += loads[l];
  }
  const std::vector<parallel::LayerLoad> total = parallel::sum_over_ranks(comm_, sum);

  const int N = comm_.size();
  parallel::PlacementSpec spec;
  spec.strategy = "explicit";
  spec.num_ranks = N;
  spec.source = fmt::format("rebalance after step {}", step);
  double fitted = 0;
  int num_moe = 0;
  int64_t slots = 0;
  for (int64_t l = 0; l < mc.num_hidden_layers; ++l) {
    if (!mc.layer_is_moe(l)) continue;
    const auto& pairs = total[static_cast<size_t>(l)].tokens_per_expert;
    std::vector<double> load(pairs.begin(), pairs.end());
    if (load.empty()) load.assign(static_cast<size_t>(mc.num_experts), 0.0);
    parallel::RankLists lists =
        config_.strategy == "replicated"
            ? parallel::replicated_placement(load, N, static_cast<int>(config_.redundant))
            : parallel::load_balanced_placement(load, N);
    lists = keep_most_in_place(std::move(lists),
                               model_.placement().layer(static_cast<int>(l)).rank_experts);
    fitted += parallel::expected_balancedness(lists, load);
    ++num_moe;
    slots = 0;
    for (const auto& r : lists) slots += static_cast<int64_t>(r.size());
    spec.layers.emplace_back(static_cast<int>(l), std::move(lists));
  }
  const parallel::Placement next =
      parallel::Placement::build(spec, mc.moe_layers(), static_cast<int>(mc.num_experts), N);
  const PlacementChange change = model_.apply_placement(next);
  std::vector<int64_t> moved{change.experts_received, change.bytes_received, change.experts_kept};
  comm_.all_reduce<int64_t>(moved, parallel::ReduceOp::kSum);
  std::vector<double> seconds{
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
  comm_.all_reduce<double>(seconds, parallel::ReduceOp::kMax);

  RebalanceEvent e;
  e.after_step = step;
  e.window_first_step = step - static_cast<int64_t>(window_.size()) + 1;
  e.balancedness_before = measured_balancedness(total);
  e.fitted_balancedness = num_moe > 0 ? fitted / num_moe : 1.0;
  e.slots_per_layer = slots;
  e.experts_moved = moved[0];
  e.bytes_moved = moved[1];
  e.experts_kept = moved[2];
  e.seconds = seconds[0];
  events_.push_back(e);
}

nlohmann::json Rebalancer::to_json() const {
  nlohmann::json j = {{"every", config_.every},
                      {"window", config_.window},
                      {"strategy", config_.strategy},
                      {"redundant", config_.redundant},
                      {"events", nlohmann::json::array()}};
  int64_t total_bytes = 0;
  for (size_t i = 0; i < events_.size(); ++i) {
    const RebalanceEvent& e = events_[i];
    const double before = e.balancedness_before, after = e.balancedness_after;
    total_bytes += e.bytes_moved;
    j["events"].push_back(
        {{"after_step", e.after_step},
         {"window_steps", {e.window_first_step, e.after_step}},
         {"balancedness_before", before},
         {"balancedness_fitted", e.fitted_balancedness},
         {"balancedness_after", after < 0 ? nlohmann::json() : nlohmann::json(after)},
         {"slots_per_layer", e.slots_per_layer},
         {"experts_moved", e.experts_moved},
         {"experts_kept", e.experts_kept},
         {"bytes_moved", e.bytes_moved},
         {"seconds", e.seconds}});
  }
  j["bytes_moved"] = total_bytes;
  return j;
}

std::string Rebalancer::summary() const {
  std::ostringstream s;
  s << fmt::format("rebalance    every {} steps on the last {}, strategy {}{}: {} time(s)\n",
                   config_.every, config_.window, config_.strategy,
                   config_.strategy == "replicated"
                       ? fmt::format(" (+{} slots per layer)", config_.redundant)
                       : "",
                   events_.size());
  for (size_t i = 0; i < events_.size(); ++i) {
    const RebalanceEvent& e = events_[i];
    const double before = e.balancedness_before, after = e.balancedness_after;
    s << fmt::format(
        "  after step {:<3} balancedness {:.3f} (steps {}..{}) -> {} measured after "
        "(fitted {:.3f}); moved {} expert(s), {:.2f} MB, kept {}, {:.1f} ms\n",
        e.after_step, before, e.window_first_step, e.after_step,
        after < 0 ? std::string("n/a") : fmt::format("{:.3f}", after), e.fitted_balancedness,
        e.experts_moved, e.bytes_moved / 1e6, e.experts_kept, e.seconds * 1e3);
  }
  return s.str();
}

}  // namespace moe::runtime
