// CostPrediction as `predict` shows it: the JSON document and the human table.
#include <fmt/format.h>

#include <sstream>

#include "runtime/analysis/cost_model.h"

namespace moe::runtime {
namespace {

nlohmann::json phases_json(const StepCost& s) {
  nlohmann::json j = nlohmann::json::object();
  for (int p = 0; p < kNumPhases; ++p) j[kPhaseNames[p]] = s.phase_s[p];
  return j;
}

}  // namespace

nlohmann::json CostPrediction::to_json() const {
  const auto step_json = [](const StepCost& s) {
    return nlohmann::json{{"seconds", s.total_s},
                          {"tokens", s.tokens},
                          {"tokens_per_s", s.total_s > 0 ? s.tokens / s.total_s : 0.0},
                          {"phases", phases_json(s)},
                          {"balancedness", s.balancedness},
                          {"remote_rows_per_token", s.remote_rows_per_token},
                          {"inter_node_rows_per_token", s.inter_node_rows_per_token},
                          {"intra_node_rows_per_token", s.intra_node_rows_per_token},
                          {"inter_node_bytes", s.inter_node_bytes},
                          {"max_remote_bytes_per_layer", s.max_remote_bytes},
                          {"routing_sampled", s.sampled}};
  };
  nlohmann::json phases_run = nlohmann::json::object();
  for (int p = 0; p < kNumPhases; ++p) {
    phases_run[kPhaseNames[p]] = prefill.phase_s[p] + timed_decode_steps * decode.phase_s[p];
  }
  return {{"command", "predict"},
          {"ranks", num_ranks},
          {"ranks_per_node", ranks_per_node},
          {"exchange", parallel::exchange_kind_name(exchange)},
          {"hardware", hardware},
          {"placement", placement},
          {"routing", routing},
          {"compute_share_per_rank", compute_share},
          {"prefill_s", prefill.total_s},
          {"decode_step_s", decode.total_s},
          {"timed_decode_steps", timed_decode_steps},
          {"prefill", step_json(prefill)},
          {"decode_step", step_json(decode)},
          {"phases_run_total_s", phases_run}};
}

std::string CostPrediction::format() const {
  std::ostringstream o;
  o << fmt::format(
      "moe-ep predict: {} rank(s) ({} node(s) of {}, {} exchange), hardware {}, placement {}, "
      "routing {}\n",
      num_ranks, (num_ranks + ranks_per_node - 1) / ranks_per_node, ranks_per_node,
      parallel::exchange_kind_name(exchange), hardware, placement, routing);
  o << fmt::format(
      "prefill      {:.6f} s   {:.1f} tokens/s   balancedness {:.3f}   remote rows "
      "per token and layer {:.2f} ({:.2f} to other nodes){}\n",
      prefill.total_s, prefill.total_s > 0 ? prefill.tokens / prefill.total_s : 0.0,
      prefill.balancedness, prefill.remote_rows_per_token, prefill.inter_node_rows_per_token,
      prefill.sampled ? " (routing sampled)" : "");
  o << fmt::format("decode step  {:.6f} s   {:.1f} tokens/s   (mean of {} timed steps)\n",
                   decode.total_s, decode.total_s > 0 ? decode.tokens / decode.total_s : 0.0,
                   timed_decode_steps);
  o << fmt::format("{:<10} {:>12} {:>14}\n", "phase", "prefill s", "decode step s");
  for (int p = 0; p < kNumPhases; ++p) {
    if (prefill.phase_s[p] == 0 && decode.phase_s[p] == 0) continue;
    o << fmt::format("{:<10} {:>12.6f} {:>14.6f}\n", kPhaseNames[p], prefill.phase_s[p],
                     decode.phase_s[p]);
  }
  o << "(phase times: slowest rank per phase; the step time is the slowest rank between the "
       "synchronisations of each MoE layer)\n";
  return o.str();
}

}  // namespace moe::runtime
