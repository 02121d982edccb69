// Shared model-command options and readable validators.
#include "runtime/cli/options.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace moe::runtime {
namespace {

bool parse_number(const std::string& text, double& out) {
  try {
    size_t pos = 0;
    out = std::stod(text, &pos);
    return pos == text.size();
  } catch (const std::exception&) {
    return false;
  }
}

CLI::Validator compare(double lo, bool inclusive) {
  const std::string op = inclusive ? ">=" : ">";
  return CLI::Validator(
      [lo, inclusive, op](std::string& value) -> std::string {
        double v = 0;
        if (!parse_number(value, v)) return fmt::format("must be a number, got '{}'", value);
        if (inclusive ? v >= lo : v > lo) return {};
        return fmt::format("must be {} {:g}, got {}", op, lo, value);
      },
      fmt::format("{} {:g}", op, lo));
}

}  // namespace

CLI::Validator at_least(double lo) {
  return compare(lo, true);
}
CLI::Validator greater_than(double lo) {
  return compare(lo, false);
}

std::vector<std::pair<std::string, kernels::BackendKind>> backend_choices() {
  return {{"cpu", kernels::BackendKind::kCpu}, {"cuda", kernels::BackendKind::kCuda}};
}
std::vector<std::pair<std::string, kernels::ComputeDtype>> compute_dtype_choices() {
  return {{"fp32", kernels::ComputeDtype::kF32}, {"bf16", kernels::ComputeDtype::kBF16}};
}
std::vector<std::pair<std::string, parallel::CommKind>> comm_choices() {
  return {{"mpi", parallel::CommKind::kMpi}, {"nccl", parallel::CommKind::kNccl}};
}

std::vector<std::pair<std::string, kernels::WireDtype>> wire_dtype_choices() {
  return {{"fp32", kernels::WireDtype::kF32},
          {"bf16", kernels::WireDtype::kBF16},
          {"fp8", kernels::WireDtype::kFP8}};
}

std::vector<std::pair<std::string, parallel::ExchangeKind>> exchange_choices() {
  std::vector<std::pair<std::string, parallel::ExchangeKind>> choices;
  for (auto kind : {parallel::ExchangeKind::kFlat, parallel::ExchangeKind::kHierarchical}) {
    choices.emplace_back(parallel::exchange_kind_name(kind), kind);
  }
  return choices;
}

CLI::Validator one_of(std::vector<std::string> choices) {
  const std::string list = fmt::format("{}", fmt::join(choices, " | "));
  return CLI::Validator(
      [choices = std::move(choices), list](std::string& value) -> std::string {
        for (const auto& c : choices) {
          if (c == value) return {};
        }
        return fmt::format("must be one of {}, got '{}'", list, value);
      },
      list);
}

void add_model_options(CLI::App* cmd, ModelOptions& o, bool model_required) {
  auto* m = cmd->add_option("--model", o.model,
                            "Model: a model YAML (configs/models/*.yaml, synthetic weights) or an "
                            "HF checkpoint directory (config.json + *.safetensors)");
  if (model_required) m->required();
  cmd->add_option("--weights", o.weights,
                  "HF checkpoint directory whose safetensors back a YAML --model");
  add_choice(cmd, "--backend", o.backend, backend_choices(), "Compute backend: cpu | cuda");
  add_choice(cmd, "--compute-dtype", o.compute_dtype, compute_dtype_choices(),
             "GEMM operand type: fp32 | bf16 (default: fp32 on cpu; cuda is bf16 only; "
             "docs/numerics.md)");
  add_choice(cmd, "--comm", o.comm, comm_choices(),
             "Transport: mpi | nccl (default: nccl with cuda, mpi with cpu)");
  cmd->add_option("--placement", o.placement,
                  "Placement YAML (configs/placements/); default: contiguous blocks of experts");
  add_choice<bool>(cmd, "--graph", o.graphs, {{"on", true}, {"off", false}},
                   "Capture small single-rank steps (decode) once per batch shape as a device "
                   "graph and replay them: on | off (default: on with cuda; with cpu, on runs the "
                   "same graph-safe step eagerly)");
  add_choice(cmd, "--dispatch-dtype", o.dispatch_dtype, wire_dtype_choices(),
             "Type of the rows dispatch sends to other ranks: fp32 | bf16 | fp8 (e4m3, one "
             "scale per 128 values; bf16 and fp8 need bf16 compute; combine returns bf16 then). "
             "Default: the compute dtype (docs/numerics.md)");
  add_choice(cmd, "--exchange", o.exchange, exchange_choices(),
             "How rows reach other nodes: flat (straight to each destination rank) | "
             "hierarchical (node-first: once per destination node, then inside it; the combine "
             "sums inside the node first). Default: hierarchical when the ranks span several "
             "nodes, else flat (docs/multinode.md)");
  add_choice<bool>(cmd, "--overlap", o.overlap, {{"on", true}, {"off", false}},
                   "Run each step on several ranks as two micro-batches, one's exchange in flight "
                   "while the other computes: on | off (default off; docs/layout.md)");
  cmd->add_option("--json", o.json, "Also write the results as JSON to this file (rank 0)");
  cmd->add_option("--trace-out", o.trace_out,
                  "Record every token's top-k experts and weights in every MoE layer to this "
                  "routing trace (safetensors; rank 0 writes it)");
  cmd->add_option("--timeout", o.timeout_s,
                  "Seconds a collective may wait before the job is ended (default 120)")
      ->check(greater_than(0));
  cmd->add_option("--threads", o.threads,
                  "Compute threads per rank (default: OPENBLAS_NUM_THREADS, else cores on this "
                  "node / ranks on this node)")
      ->check(at_least(0));
  cmd->add_option("--ranks-per-node", o.ranks_per_node,
                  "Treat every G consecutive ranks as one node instead of the nodes MPI reports "
                  "(rehearse a multi-node layout on one machine); G must divide the rank count")
      ->check(at_least(1));
  cmd->add_flag("--quiet", o.quiet, "Do not print the resolved setup and load progress");
  add_choice<bool>(cmd, "--quantize", o.quantize_fp8, {{"fp8", true}},
                   "Hold bf16 weights as FP8 (e4m3, 128 x 128 block scales, as the published FP8 "
                   "checkpoints: attention, experts, dense MLPs): fp8 (docs/fp8.md)");
}

}  // namespace moe::runtime
