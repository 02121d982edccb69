// What commands print and write besides their main output: JSON files (rank 0), memory of a
// session and the `plan` prediction for it, and input checks shared by the model commands.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/analysis/plan.h"
#include "runtime/cli/session.h"
#include "runtime/model/engine.h"

namespace moe::runtime {

// Writes `j` (indented) to `path`; throws moe::Error("io") naming the path on failure.
void write_json(const std::string& path, const nlohmann::json& j);

// Fails before any weights load when the sequences cannot fit the model's positions.
void check_context_fits(const ModelConfig& config, int64_t needed, const std::string& what);
int64_t max_length(const TokenBatch& batch);

// This rank's weights, KV cache and backend peak.
nlohmann::json memory_json(const Session& s);
// What `moe-ep plan` predicts for this session's largest rank: same model, world size,
// placement, KV-cache element type, batch and context.
RankMemory planned_memory(const Session& s, int64_t sequences, int64_t context);

// Peak resident set of this process (VmHWM), bytes.
int64_t peak_rss_bytes();

}  // namespace moe::runtime
