// RUN.yaml loader on top of parallel/yaml_util (typed keys, file:line errors, unknown keys
// rejected so a typo never silently runs the default).
#include "runtime/io/run_config.h"

#include <filesystem>

#include "kernels/common/check.h"
#include "parallel/yaml_util.h"

namespace moe::runtime {
namespace {

namespace y = parallel::yaml;

std::string resolve(const std::string& base_file, const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty() || fs::path(path).is_absolute()) return path;
  fs::path beside = fs::path(base_file).parent_path() / path;
  std::error_code ec;
  if (fs::exists(beside, ec)) return beside.lexically_normal().string();
  return path;
}

}  // namespace

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  y::Doc doc = y::load(path);
  for (const auto& o : overrides) y::apply_override(doc, o);
  const YAML::Node& root = doc.root;
  y::reject_unknown_keys(doc, root,
                         {"model", "weights", "placement", "backend", "compute_dtype", "comm",
                          "threads", "timeout_s", "compare_sgemm", "workload", "rebalance"});
  RunConfig c;
  c.source = path;
  c.model = resolve(path, y::require<std::string>(doc, root, "model"));
  c.weights = resolve(path, y::value_or<std::string>(doc, root, "weights", ""));
  c.placement = resolve(path, y::value_or<std::string>(doc, root, "placement", ""));
  const std::string backend = y::value_or<std::string>(doc, root, "backend", "cpu");
  const std::string compute_dtype = y::value_or<std::string>(doc, root, "compute_dtype", "");
  const std::string comm = y::value_or<std::string>(doc, root, "comm", "");
  c.threads = y::value_or<int64_t>(doc, root, "threads", 0);
  c.timeout_s = y::value_or<double>(doc, root, "timeout_s", c.timeout_s);
  c.compare_sgemm = y::value_or<bool>(doc, root, "compare_sgemm", true);
  if (c.threads < 0) y::fail(doc, root["threads"], "threads", "must be >= 0");
  if (c.timeout_s <= 0) y::fail(doc, root["timeout_s"], "timeout_s", "must be > 0");
  if (backend != "cpu" && backend != "cuda") {
    y::fail(doc, root["backend"], "backend", fmt::format("'{}' is not cpu or cuda", backend));
  }
  c.backend = kernels::parse_backend_kind(backend);
  if (!compute_dtype.empty() && compute_dtype != "fp32" && compute_dtype != "bf16") {
    y::fail(doc, root["compute_dtype"], "compute_dtype",
            fmt::format("'{}' is not fp32 or bf16", compute_dtype));
  }
  if (!compute_dtype.empty()) c.compute_dtype = kernels::parse_compute_dtype(compute_dtype);
  if (!comm.empty() && comm != "mpi" && comm != "nccl") {
    y::fail(doc, root["comm"], "comm", fmt::format("'{}' is not mpi or nccl", comm));
  }
  if (!comm.empty()) c.comm = parallel::parse_comm_kind(comm);
  const YAML::Node w = root["workload"];
  if (w.IsDefined() && !w.IsNull()) {
    if (!w.IsMap()) y::fail(doc, w, "workload", "expected a mapping");
    y::reject_unknown_keys(
        doc, w, {"num_sequences", "prompt_len", "decode_steps", "seed", "routing"}, "workload");
    auto& wl = c.workload;
    wl.num_sequences =
        y::value_or<int64_t>(doc, w, "num_sequences", wl.num_sequences, "workload.num_sequences");
    wl.prompt_len =
        y::value_or<int64_t>(doc, w, "prompt_len", wl.prompt_len, "workload.prompt_len");
    wl.decode_steps =
        y::value_or<int64_t>(doc, w, "decode_steps", wl.decode_steps, "workload.decode_steps");
    wl.seed = static_cast<uint64_t>(
        y::value_or<int64_t>(doc, w, "seed", static_cast<int64_t>(wl.seed), "workload.seed"));
    if (wl.num_sequences < 1)
      y::fail(doc, w["num_sequences"], "workload.num_sequences", "must be >= 1");
    if (wl.prompt_len < 1) y::fail(doc, w["prompt_len"], "workload.prompt_len", "must be >= 1");
    if (wl.decode_steps < 0)
      y::fail(doc, w["decode_steps"], "workload.decode_steps", "must be >= 0");
    const YAML::Node routing = w["routing"];
    if (routing.IsDefined() && !routing.IsNull()) {
      wl.routing = parse_routing_spec(doc, routing, "workload.routing");
    }
  }
  const YAML::Node rb = root["rebalance"];
  if (rb.IsDefined() && !rb.IsNull()) {
    if (!rb.IsMap()) y::fail(doc, rb, "rebalance", "expected a mapping {every: STEPS, ...}");
    y::reject_unknown_keys(doc, rb, {"every", "window", "strategy", "redundant"}, "rebalance");
    auto& r = c.rebalance;
    r.every = y::require<int64_t>(doc, rb, "every", "rebalance");
    r.window = y::value_or<int64_t>(doc, rb, "window", r.every, "rebalance");
    r.strategy = y::value_or<std::string>(doc, rb, "strategy", r.strategy, "rebalance");
    r.redundant = y::value_or<int64_t>(doc, rb, "redundant", 0, "rebalance");
    if (r.every < 1) y::fail(doc, rb["every"], "rebalance.every", "must be >= 1");
    if (r.window < 1) y::fail(doc, rb["window"], "rebalance.window", "must be >= 1");
    if (r.strategy != "load_balanced" && r.strategy != "replicated") {
      y::fail(doc, rb["strategy"], "rebalance.strategy",
              fmt::format("unknown strategy '{}' (known: load_balanced, replicated)", r.strategy));
    }
    if (r.redundant < 0) y::fail(doc, rb["redundant"], "rebalance.redundant", "must be >= 0");
    if (r.strategy == "load_balanced" && r.redundant > 0) {
      y::fail(doc, rb["redundant"], "rebalance.redundant",
              "only strategy 'replicated' adds redundant slots");
    }
  }
  return c;
}

}  // namespace moe::runtime
