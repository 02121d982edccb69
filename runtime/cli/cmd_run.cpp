// `moe-ep run`: a workload from RUN.yaml (prefill of deterministic prompts, then decode steps);
// rank 0 prints tokens/s, GFLOP/s against a plain sgemm on the same shapes, memory against the
// plan, expert load, traffic and time per phase, and writes the same as JSON.
#include <fmt/format.h>

#include <memory>
#include <random>

#include "kernels/common/check.h"
#include "kernels/cpu/host.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"
#include "runtime/cli/session.h"
#include "runtime/io/run_config.h"
#include "runtime/model/engine.h"
#include "runtime/model/metrics.h"
#include "runtime/model/rebalancer.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::runtime {
namespace {

struct RunArgs {
  ModelOptions model;
  std::string config;
  std::vector<std::string> sets;
};

// The GEMM shapes rank `rank`'s prefill ran (its experts' rows from the reduced loads), for the
// sgemm yardstick.
std::vector<kernels::GemmShape> prefill_shapes(const Model& m, int64_t tokens,
                                               const MetricsReport& metrics, int rank,
                                               const parallel::Placement& placement) {
  const ModelShapes& s = m.shapes();
  std::vector<kernels::GemmShape> shapes;
  for (int64_t l = 0; l < s.num_layers; ++l) {
    shapes.push_back({tokens, s.q_width, s.hidden});
    shapes.push_back({tokens, s.kv_width, s.hidden});
    shapes.push_back({tokens, s.kv_width, s.hidden});
    shapes.push_back({tokens, s.hidden, s.q_width});
    if (!m.config().layer_is_moe(l)) {
      shapes.push_back({tokens, s.dense_inter, s.hidden, 2});
      shapes.push_back({tokens, s.hidden, s.dense_inter});
      continue;
    }
    shapes.push_back({tokens, s.num_experts, s.hidden});
    for (const auto& entry : metrics.layers) {
      if (entry.phase != "prefill" || entry.layer != l) continue;
      const parallel::LayerPlacement& lp = placement.layer(static_cast<int>(l));
      for (int e : lp.rank_experts[rank]) {
        const int64_t replicas = static_cast<int64_t>(lp.expert_slots[e].size());
        const int64_t rows = entry.load.tokens_per_expert[static_cast<size_t>(e)] / replicas;
        shapes.push_back({rows, s.expert_inter, s.hidden, 2});
        shapes.push_back({rows, s.hidden, s.expert_inter});
      }
    }
  }
  return shapes;
}

// Routing (workload.routing; nullptr: the model's router), checked before any weight loads: a
// replayed trace must hold every row the workload routes.
std::unique_ptr<SyntheticRouting> workload_routing(const RunConfig& rc, const ModelOptions& o,
                                                   int64_t decode_steps) {
  const Workload& w = rc.workload;
  std::unique_ptr<SyntheticRouting> routing = make_routing(w.routing, load_model_config(o.model));
  if (routing && w.routing.kind == "replay") {
    routing->set_prompt_lengths(
        std::vector<int64_t>(static_cast<size_t>(w.num_sequences), w.prompt_len));
    MOE_CHECK_AS("trace", routing->trace_rows() >= routing->rows_needed(decode_steps),
                 "{}: trace has {} token rows, but the workload of {} ({} sequences x {} prompt "
                 "tokens, {} steps) routes {}",
                 w.routing.trace, routing->trace_rows(), rc.source, w.num_sequences, w.prompt_len,
                 decode_steps, routing->rows_needed(decode_steps));
  }
  return routing;
}

// Deterministic prompts: sequence i from (seed, i), whatever the world size.
TokenBatch workload_prompts(const Workload& w, int64_t vocab_size) {
  TokenBatch prompts(static_cast<size_t>(w.num_sequences));
  for (int64_t i = 0; i < w.num_sequences; ++i) {
    std::mt19937_64 rng(w.seed * 1000003ull + static_cast<uint64_t>(i));
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab_size - 1));
    for (int64_t t = 0; t < w.prompt_len; ++t) prompts[i].push_back(tok(rng));
  }
  return prompts;
}

// What one run measured, as rank 0 reports it.
struct RunResult {
  GenerateOutput out;
  MetricsReport metrics;
  // Max over ranks: expert shard, dense replica, KV cache, backend peak, RSS peak, device memory
  // in use grown since the session opened (-1: host backend).
  std::vector<int64_t> memory;
  RankMemory plan;
  double prefill_tps = 0, decode_tps = 0, forward_gflops = 0;
  double sgemm_gflops = 0;  // 0: no yardstick
};

// This session's memory, max over ranks (collective); the order of RunResult::memory.
std::vector<int64_t> max_rank_memory(const Session& s) {
  std::vector<int64_t> mem{
      s.model->weights().sizes().expert_bytes(),
      s.model->weights().sizes().dense_bytes(),
      s.model->kv_cache().bytes(),
      static_cast<int64_t>(s.backend->peak_allocated_bytes()),
      peak_rss_bytes(),
      s.device_used_at_open < 0 ? -1 : s.backend->device_used_bytes() - s.device_used_at_open};
  s.comm->all_reduce<int64_t>(mem, parallel::ReduceOp::kMax);
  return mem;
}

// Yardstick: plain cblas_sgemm over the same GEMM shapes as rank 0's prefill, same threads.
double rank0_sgemm_gflops(const Session& s, const Workload& w, const MetricsReport& metrics) {
  const int N = s.size();
  int64_t my_tokens = 0;
  for (int64_t i = 0; i < w.num_sequences; i += N) my_tokens += w.prompt_len;
  auto shapes = prefill_shapes(*s.model, my_tokens, metrics, 0, *s.placement);
  shapes.push_back({(w.num_sequences + N - 1) / N, s.config.vocab_size, s.config.hidden_size});
  return kernels::measure_host_sgemm(shapes).gflops();
}

void print_run_report(const Session& s, const Workload& w, const RunResult& r,
                      const Rebalancer* rebalancer) {
  const int N = s.size();
  const std::vector<int64_t>& mem = r.memory;
  const RankMemory& plan = r.plan;
  fmt::print("moe-ep run: {} on {} rank(s), backend {} ({} compute), placement {}\n", s.config.name,
             N, s.backend->name(), kernels::compute_dtype_name(s.backend->compute_dtype()),
             s.placement->strategy());
  fmt::print("workload     {} sequences x {} prompt tokens, {} decode steps\n", w.num_sequences,
             w.prompt_len, w.decode_steps);
  fmt::print("routing      {}\n", w.routing.describe());
  fmt::print("load         {:.2f} s\n", s.load_s);
  fmt::print("prefill      {:.4f} s   {:.1f} tokens/s   {:.2f} GFLOP/s (all ranks)\n",
             r.out.prefill_s, r.prefill_tps, r.forward_gflops);
  if (r.sgemm_gflops > 0) {
    fmt::print(
        "sgemm        {:.2f} GFLOP/s per rank on rank 0's prefill GEMM shapes "
        "(forward per rank: {:.2f} GFLOP/s = {:.0f}% of sgemm)\n",
        r.sgemm_gflops, r.forward_gflops / N, 100.0 * r.forward_gflops / N / r.sgemm_gflops);
  }
  if (!r.out.decode_step_s.empty()) {
    fmt::print("decode       {:.4f} s   {:.1f} tokens/s   step first {:.2f} ms, last {:.2f} ms\n",
               r.out.decode_s, r.decode_tps, r.out.decode_step_s.front() * 1e3,
               r.out.decode_step_s.back() * 1e3);
  }
  fmt::print(
      "memory       per rank max: experts {:.2f} MB, dense replica {:.2f} MB, KV cache "
      "{:.2f} MB, backend peak {:.2f} MB, RSS peak {:.2f} MB\n",
      mem[0] / 1e6, mem[1] / 1e6, mem[2] / 1e6, mem[3] / 1e6, mem[4] / 1e6);
  fmt::print(
      "vs plan      `moe-ep plan` predicts {:.2f} MB for the largest rank (weights {:.2f}, "
      "KV {:.2f}, buffers {:.2f} at worst-case routing); backend peak = {:.1f}% of it{}\n",
      plan.total_bytes / 1e6, (plan.dense_replica_bytes + plan.expert_shard_bytes) / 1e6,
      plan.kv_cache_bytes / 1e6, (plan.activation_buffer_bytes + plan.communication_bytes) / 1e6,
      100.0 * mem[3] / plan.total_bytes,
      mem[5] < 0 ? std::string()
                 : fmt::format("; device memory in use grew by {:.2f} MB = {:.1f}% of it "
                               "(cudaMemGetInfo, whole device)",
                               mem[5] / 1e6, 100.0 * mem[5] / plan.total_bytes));
  fmt::print("{}", r.metrics.summary());
  if (rebalancer) fmt::print("{}", rebalancer->summary());
}

nlohmann::json run_report_json(const Session& s, const Workload& w, const RunResult& r,
                               const Rebalancer* rebalancer) {
  const std::vector<int64_t>& mem = r.memory;
  const RankMemory& plan = r.plan;
  return {{"command", "run"},
          {"model", s.config.name},
          {"ranks", s.size()},
          {"nodes", s.comm->node_layout().num_nodes},
          {"ranks_per_node", s.comm->node_layout().local_size},
          {"exchange", parallel::exchange_kind_name(s.model->exchange_kind())},
          {"backend", s.backend->name()},
          {"compute_dtype", kernels::compute_dtype_name(s.backend->compute_dtype())},
          {"placement", s.placement->strategy()},
          {"threads", kernels::host_threads()},
          {"workload",
           {{"num_sequences", w.num_sequences},
            {"prompt_len", w.prompt_len},
            {"decode_steps", w.decode_steps},
            {"seed", w.seed},
            {"routing", w.routing.describe()}}},
          {"load_s", s.load_s},
          {"prefill_s", r.out.prefill_s},
          {"prefill_tokens_per_s", r.prefill_tps},
          {"prefill_gflops", r.forward_gflops},
          {"sgemm_gflops_per_rank", r.sgemm_gflops},
          {"decode_s", r.out.decode_s},
          {"decode_tokens_per_s", r.decode_tps},
          {"decode_step_s", r.out.decode_step_s},
          {"memory_max_per_rank",
           {{"expert_shard_bytes", mem[0]},
            {"dense_replica_bytes", mem[1]},
            {"kv_cache_bytes", mem[2]},
            {"peak_backend_bytes", mem[3]},
            {"peak_rss_bytes", mem[4]},
            {"device_used_delta_bytes", mem[5]}}},
          {"plan_per_rank",
           {{"dense_replica_bytes", plan.dense_replica_bytes},
            {"expert_shard_bytes", plan.expert_shard_bytes},
            {"kv_cache_bytes", plan.kv_cache_bytes},
            {"activation_buffer_bytes", plan.activation_buffer_bytes},
            {"communication_bytes", plan.communication_bytes},
            {"total_bytes", plan.total_bytes}}},
          {"load_per_rank", s.load_per_rank},
          {"metrics", r.metrics.to_json(true)},
          {"tokens", r.out.tokens},
          {"rebalance", rebalancer ? rebalancer->to_json() : nlohmann::json()}};
}

int run_run(const RunArgs& a, const CLI::App& cmd) {
  const RunConfig rc = load_run_config(a.config, a.sets);
  const ModelOptions o = model_options_with_run_config(a.model, cmd, rc);
  const Workload& w = rc.workload;
  check_context_fits(load_model_config(o.model), w.prompt_len + w.decode_steps,
                     fmt::format("{}: workload.prompt_len + workload.decode_steps", rc.source));

  const int64_t decode_steps = std::max<int64_t>(w.decode_steps, 1);
  const int64_t context = w.prompt_len + decode_steps;
  // The routing outlives the session.
  const std::unique_ptr<SyntheticRouting> routing = workload_routing(rc, o, decode_steps);
  auto s = open_session(o, w.num_sequences, context);
  set_routing_hook(*s, routing.get());
  // Online rebalancing (rebalance:) runs between the model's steps.
  std::unique_ptr<Rebalancer> rebalancer;
  if (rc.rebalance.enabled()) {
    rebalancer = std::make_unique<Rebalancer>(rc.rebalance, *s->model, *s->comm);
  }
  const TokenBatch prompts = workload_prompts(w, s->config.vocab_size);
  Engine engine(*s->model, *s->comm);
  s->comm->barrier();
  RunResult r;
  r.out = engine.generate(prompts, decode_steps);
  r.metrics = engine.metrics().reduce(*s->comm, s->model->instrumentation());
  if (rebalancer) rebalancer->finish();
  write_trace_out(*s, o);
  r.memory = max_rank_memory(*s);
  r.plan = planned_memory(*s, w.num_sequences, context);

  const int64_t prefill_tokens = w.num_sequences * w.prompt_len;
  const int64_t decode_tokens = w.num_sequences * (decode_steps - 1);
  r.prefill_tps = prefill_tokens / r.out.prefill_s;
  r.decode_tps = r.out.decode_s > 0 ? decode_tokens / r.out.decode_s : 0.0;
  r.forward_gflops = engine.prefill_flops() / r.out.prefill_s * 1e-9;
  if (rc.compare_sgemm && o.backend == kernels::BackendKind::kCpu && s->rank() == 0) {
    r.sgemm_gflops = rank0_sgemm_gflops(*s, w, r.metrics);
  }
  if (s->rank() != 0) return 0;
  print_run_report(*s, w, r, rebalancer.get());
  if (!o.json.empty()) write_json(o.json, run_report_json(*s, w, r, rebalancer.get()));
  return 0;
}

}  // namespace

Command add_run_command(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  auto* cmd = app.add_subcommand(
      "run",
      "Run a workload (prefill + decode steps) from RUN.yaml and report tokens/s, GFLOP/s, "
      "time per phase, memory and expert load");
  cmd->add_option("--config", a->config, "Run YAML (configs/bench/*.yaml)")->required();
  cmd->add_option("--set", a->sets,
                  "Override a key of the run YAML: key=value (repeatable), e.g. --set "
                  "workload.prompt_len=64");
  add_model_options(cmd, a->model, false);
  return {cmd, [a, cmd] { return run_run(*a, *cmd); }};
}

}  // namespace moe::runtime
