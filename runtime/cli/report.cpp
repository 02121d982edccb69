// Report helpers shared by the commands.
#include "runtime/cli/report.h"

#include <fstream>

#include "kernels/common/check.h"
#include "runtime/model/arithmetic.h"

namespace moe::runtime {

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  MOE_CHECK_AS("io", out.good(), "--json {}: cannot open for writing", path);
  out << j.dump(2) << "\n";
  MOE_CHECK_AS("io", out.good(), "--json {}: write failed", path);
}

void check_context_fits(const ModelConfig& config, int64_t needed, const std::string& what) {
  MOE_CHECK_AS("input", needed <= config.max_position_embeddings,
               "{} needs {} positions but {} allows max_position_embeddings {}", what, needed,
               config.source, config.max_position_embeddings);
}

int64_t max_length(const TokenBatch& b) {
  int64_t m = 0;
  for (const auto& s : b) m = std::max<int64_t>(m, static_cast<int64_t>(s.size()));
  return m;
}

nlohmann::json memory_json(const Session& s) {
  const RankWeights& w = s.model->weights().sizes();
  return {{"expert_shard_bytes", w.expert_bytes()},
          {"local_experts", w.expert_slots},
          {"dense_replica_bytes", w.dense_bytes()},
          {"kv_cache_bytes", s.model->kv_cache().bytes()},
          {"peak_backend_bytes", s.backend->peak_allocated_bytes()}};
}

RankMemory planned_memory(const Session& s, int64_t sequences, int64_t context) {
  PlanOptions po;
  po.batch = sequences;
  po.context = context;
  po.kv_bytes = static_cast<int>(kernels::kv_dtype_bytes(s.backend->kv_cache_dtype()));
  po.expert_slots_per_rank = expert_slots_per_rank(s.config, *s.placement);
  po.placement_name = s.placement->strategy();
  if (s.model->exchange_kind() == parallel::ExchangeKind::kHierarchical) {
    po.ranks_per_node = s.comm->node_layout().local_size;
  }
  return make_plan(s.config, po).ranks.at(0);
}

int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return 0;
}

}  // namespace moe::runtime
