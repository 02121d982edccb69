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
  cmd->add_option("--backend", o.backend, "Compute backend: cpu | cuda")
      ->check(one_of({"cpu", "cuda"}));
  cmd->add_option("--compute-dtype", o.compute_dtype,
                  "GEMM operand type: fp32 | bf16 (default: fp32 on cpu; cuda is bf16 only; "
                  "docs/numerics.md)")
      ->check(one_of({"fp32", "bf16"}));
  cmd->add_option("--comm", o.comm, "Transport: mpi | nccl (default: nccl with cuda, mpi with cpu)")
      ->check(one_of({"mpi", "nccl"}));
  cmd->add_option("--placement", o.placement,
                  "Placement YAML (configs/placements/); default: contiguous blocks of experts");
  cmd->add_option("--graph", o.graph,
                  "Capture small single-rank steps (decode) once per batch shape as a device "
                  "graph and replay them: on | off (default: on with cuda; with cpu, on runs the "
                  "same graph-safe step eagerly)")
      ->check(one_of({"on", "off"}));
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
  cmd->add_flag("--quiet", o.quiet, "Do not print the resolved setup and load progress");
}

}  // namespace moe::runtime
