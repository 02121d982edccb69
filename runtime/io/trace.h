// Routing traces: the top-k experts (and weights) every token chose in every MoE layer, as a
// safetensors file other tools can read and write:
//   layers.{l}.topk_ids      I32 [tokens, top_k]   for each MoE layer index l of the model
//   layers.{l}.topk_weights  F32 [tokens, top_k]   optional
//   metadata: num_experts, top_k, num_layers (the model's num_hidden_layers)
// Rows are tokens in a fixed order: by step (0 = the first forward of the run: the prefill), then
// global sequence index, then position. Every MoE layer has the same rows. A run with S sequences
// of prompt lengths L_i thus has rows: step 0 = sequence 0's L_0 positions, sequence 1's, ...;
// then each decode step one row per sequence still decoding, ascending. Files are little-endian.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/io/config.h"

namespace moe::runtime {

struct RoutingTrace {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t num_layers = 0;                   // the model's layer count (dense layers have no data)
  std::vector<int64_t> layers;              // MoE layer indices present, ascending
  std::vector<std::vector<int32_t>> ids;    // per entry of `layers`: [tokens * top_k]
  std::vector<std::vector<float>> weights;  // per entry of `layers`: [tokens * top_k] or empty

  int64_t num_tokens(size_t i) const {
    return top_k > 0 ? static_cast<int64_t>(ids[i].size()) / top_k : 0;
  }
};

// Reads and checks a trace file (everything check_trace checks). Errors are moe::Error("trace")
// naming the file and the problem: missing metadata or tensors, a wrong dtype or shape, layers
// with different token counts, ids out of range or repeated in a row, an empty trace.
RoutingTrace read_trace(const std::string& path);

// Writes `trace` in the format above (after check_trace); rank 0 only, no collective.
void write_trace(const std::string& path, const RoutingTrace& trace);

// Self-consistency: sizes match top_k and each other, every id in [0, num_experts) and distinct
// within its row, at least one layer and one token. `path` names the trace in messages.
void check_trace(const RoutingTrace& trace, const std::string& path);

// check_trace plus agreement with the model: num_experts, top_k and num_layers equal the model's
// and the layers present are exactly the model's MoE layers.
void validate_trace(const RoutingTrace& trace, const ModelConfig& config, const std::string& path);

}  // namespace moe::runtime
