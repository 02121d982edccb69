// moe-ep command line. Every rank parses the same arguments and builds its own part of the
// model; rank 0 alone prints and writes files. Usage errors exit 2 (printed by rank 0); input
// errors are moe::Error, caught in launch/main.
#include "runtime/cli/cli.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <thread>

#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "kernels/cpu/blas_util.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"
#ifdef MOE_EP_HAVE_NCCL
#include "kernels/cuda/cuda_backend.h"
#include "parallel/nccl_communicator.h"
#endif
#include "runtime/io/config.h"
#include "runtime/model/engine.h"
#include "runtime/model/model.h"
#include "runtime/io/npy.h"
#include "runtime/analysis/plan.h"
#include "runtime/io/run_config.h"
#include "runtime/io/weights.h"

namespace moe::runtime {
namespace {

using Clock = std::chrono::steady_clock;

// Options every model command shares.
struct CommonOptions {
  std::string model;
  std::string weights;
  std::string backend = "cpu";
  std::string comm;
  std::string placement;
  std::string json;
  double timeout_s = 120;
  int threads = 0;
  bool quiet = false;
};

void add_common(CLI::App* cmd, CommonOptions& o, bool model_required) {
  auto* m = cmd->add_option("--model", o.model,
                            "Model: a model YAML (configs/models/*.yaml, synthetic weights) or an "
                            "HF checkpoint directory (config.json + *.safetensors)");
  if (model_required) m->required();
  cmd->add_option("--weights", o.weights,
                  "HF checkpoint directory whose safetensors back a YAML --model");
  cmd->add_option("--backend", o.backend, "Compute backend: cpu | cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--comm", o.comm, "Transport: mpi | nccl (default: nccl with cuda, mpi with cpu)")
      ->check(CLI::IsMember({"mpi", "nccl"}));
  cmd->add_option("--placement", o.placement,
                  "Placement YAML (configs/placements/); default: contiguous blocks of experts");
  cmd->add_option("--json", o.json, "Also write the results as JSON to this file (rank 0)");
  cmd->add_option("--timeout", o.timeout_s,
                  "Seconds a collective may wait before the job is ended (default 120)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o.threads,
                  "BLAS threads per rank (default: cores on this node / ranks on this node)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--quiet", o.quiet, "Do not print the resolved setup and load progress");
}

// OPENBLAS_NUM_THREADS wins when set; otherwise share this node's cores among its ranks.
int default_threads(int world_size) {
  if (const char* s = std::getenv("OPENBLAS_NUM_THREADS")) {
    if (std::atoi(s) > 0) return std::atoi(s);
  }
  int local = world_size;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(s));
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / local);
}

// Everything a model command needs on this rank, built in dependency order.
struct Session {
  std::unique_ptr<parallel::Communicator> comm;
  std::unique_ptr<kernels::Backend> backend;
  ModelConfig config;
  std::optional<parallel::Placement> placement;
  std::unique_ptr<WeightSource> weights;
  std::unique_ptr<Model> model;
  double load_s = 0;
  int64_t device_used_at_open = -1;  // device-wide bytes in use before the model (-1: host)
  nlohmann::json load_per_rank = nlohmann::json::array();  // what each rank read and holds

  int rank() const { return comm->rank(); }
  ~Session() {
    model.reset();
    // Explicit teardown on the normal path only: while an error unwinds, main ends the job and a
    // collective teardown could wait on a rank that is gone.
    if (comm && std::uncaught_exceptions() == 0) comm->shutdown();
  }
};

void log0(const Session& s, bool quiet, const std::string& line) {
  if (s.rank() == 0 && !quiet) fmt::print(stderr, "moe-ep: {}\n", line);
}

// Builds communicator, backend, config, placement, weights and model. `max_seqs` and `max_len`
// size the KV cache for the whole batch (this rank holds ceil(max_seqs / N) sequences).
std::unique_ptr<Session> open_session(const CommonOptions& o, int64_t max_seqs, int64_t max_len) {
  auto s = std::make_unique<Session>();
  parallel::CommOptions copts;
  copts.timeout_s = o.timeout_s;
  std::string comm = o.comm.empty() ? (o.backend == "cuda" ? "nccl" : "mpi") : o.comm;
  MOE_CHECK_AS("config", !(comm == "nccl" && o.backend != "cuda"),
               "--comm nccl needs --backend cuda (NCCL moves device memory)");
  if (comm == "nccl") {
#ifdef MOE_EP_HAVE_NCCL
    auto mpi = parallel::make_mpi_communicator(copts);
    const int local_rank = mpi->local_rank();
    mpi->shutdown();
    s->comm = parallel::make_nccl_communicator(copts, local_rank);
#else
    MOE_THROW("config", "--comm nccl: this moe-ep was built without NCCL (configure with "
                        "-DMOE_EP_CUDA=ON)");
#endif
  } else {
    s->comm = parallel::make_mpi_communicator(copts);
  }
  const int N = s->comm->size();
  kernels::cpu::set_blas_threads(o.threads > 0 ? o.threads : default_threads(N));
  s->backend = kernels::make_backend(o.backend, s->comm->local_rank());
  s->device_used_at_open = s->backend->device_used_bytes();
#ifdef MOE_EP_HAVE_NCCL
  // Exchanges are ordered against the backend's stream with events instead of a device sync.
  if (auto* nccl = parallel::as_nccl_communicator(s->comm.get())) {
    if (auto* cuda = kernels::as_cuda_backend(s->backend.get())) {
      nccl->set_compute_stream(cuda->stream());
    }
  }
#endif

  s->config = load_model_config(o.model);
  const bool model_is_checkpoint = std::filesystem::is_directory(o.model);
  std::string weights_dir = !o.weights.empty() ? o.weights : (model_is_checkpoint ? o.model : "");
  if (!weights_dir.empty()) {
    s->weights = open_checkpoint(weights_dir, s->config);
  } else {
    s->weights = make_synthetic_weights(s->config, s->config.seed);
  }

  parallel::PlacementSpec spec;
  if (!o.placement.empty()) spec = parallel::load_placement_spec(o.placement);
  s->placement = parallel::Placement::build(spec, s->config.moe_layers(),
                                            static_cast<int>(s->config.num_experts), N);

  log0(*s, o.quiet,
       fmt::format("model {} ({}): {} layers, hidden {}, {} experts top-{}, vocab {}; weights: {}",
                   s->config.name, s->config.source, s->config.num_hidden_layers,
                   s->config.hidden_size, s->config.num_experts, s->config.num_experts_per_tok,
                   s->config.vocab_size, s->weights->describe()));
  log0(*s, o.quiet,
       fmt::format("{} rank(s), backend {}, comm {}, placement {}, {} BLAS thread(s) per rank",
                   N, s->backend->name(), s->comm->name(), s->placement->strategy(),
                   kernels::cpu::blas_threads()));

  // Progress line on rank 0 for loads that take a while.
  auto t0 = Clock::now();
  auto last = t0;
  Model::Progress progress;
  if (s->rank() == 0 && !o.quiet) {
    progress = [&last, t0](int64_t done, int64_t total) {
      auto now = Clock::now();
      if (now - last < std::chrono::seconds(2) && done < total) return;
      if (done >= total && now - t0 < std::chrono::seconds(2)) return;
      last = now;
      const double secs = std::chrono::duration<double>(now - t0).count();
      fmt::print(stderr, "moe-ep: loading weights (rank 0): {:.2f} / {:.2f} GB ({:.0f}%), {:.1f} s\n",
                 done / 1e9, total / 1e9, total > 0 ? 100.0 * done / total : 100.0, secs);
    };
  }
  const int64_t slots = Engine::slots_needed(max_seqs, N);
  s->model = std::make_unique<Model>(s->config, *s->placement, *s->comm, *s->backend, *s->weights,
                                     std::max<int64_t>(slots, 1), max_len, progress);
  s->load_s = std::chrono::duration<double>(Clock::now() - t0).count();

  // Per-rank load report: what each rank read (checkpoints) and held, gathered on every rank.
  const LoadStats ls = s->weights->stats();
  std::vector<double> mine{static_cast<double>(ls.bytes_read), static_cast<double>(ls.files_opened),
                           static_cast<double>(ls.tensors_read), s->load_s,
                           static_cast<double>(s->model->dense_bytes()),
                           static_cast<double>(s->model->expert_bytes()),
                           static_cast<double>(s->model->num_local_experts())};
  std::vector<double> all(mine.size() * static_cast<size_t>(N));
  s->comm->all_gather<double>(mine, all);
  for (int r = 0; r < N; ++r) {
    const double* v = all.data() + r * mine.size();
    s->load_per_rank.push_back({{"rank", r},
                                {"bytes_read", static_cast<int64_t>(v[0])},
                                {"files_opened", static_cast<int64_t>(v[1])},
                                {"tensors_read", static_cast<int64_t>(v[2])},
                                {"load_s", v[3]},
                                {"dense_replica_bytes", static_cast<int64_t>(v[4])},
                                {"expert_shard_bytes", static_cast<int64_t>(v[5])},
                                {"local_experts", static_cast<int64_t>(v[6])}});
    if (!weights_dir.empty()) {
      log0(*s, o.quiet,
           fmt::format("rank {}: read {:.2f} MB from {} file(s), {} tensors, {} experts, {:.2f} s",
                       r, v[0] / 1e6, static_cast<int64_t>(v[1]), static_cast<int64_t>(v[2]),
                       static_cast<int64_t>(v[6]), v[3]));
    }
  }
  return s;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  MOE_CHECK_AS("io", out.good(), "--json {}: cannot open for writing", path);
  out << j.dump(2) << "\n";
  MOE_CHECK_AS("io", out.good(), "--json {}: write failed", path);
}

// Fails before any weights load when the sequences cannot fit the model's positions.
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
  return {{"expert_shard_bytes", s.model->expert_bytes()},
          {"local_experts", s.model->num_local_experts()},
          {"dense_replica_bytes", s.model->dense_bytes()},
          {"kv_cache_bytes", s.model->kv_cache_bytes()},
          {"peak_backend_bytes", s.backend->peak_allocated_bytes()}};
}

// Expert slots each rank holds, summed over the MoE layers (the plan's placement override).
std::vector<int64_t> expert_slots_per_rank(const ModelConfig& config,
                                           const parallel::Placement& p) {
  std::vector<int64_t> per_rank(static_cast<size_t>(p.num_ranks()), 0);
  for (int l = 0; l < p.num_layers(); ++l) {
    if (!config.layer_is_moe(l)) continue;
    for (int r = 0; r < p.num_ranks(); ++r) {
      per_rank[static_cast<size_t>(r)] += p.layer(l).num_local_slots(r);
    }
  }
  return per_rank;
}

// What `moe-ep plan` predicts for this session's largest rank: same model, world size,
// placement, KV-cache element type, batch and context.
RankMemory planned_memory(const Session& s, int64_t sequences, int64_t context) {
  PlanOptions po;
  po.batch = sequences;
  po.context = context;
  po.kv_bytes = static_cast<int>(kernels::kv_dtype_bytes(s.backend->kv_cache_dtype()));
  po.expert_slots_per_rank = expert_slots_per_rank(s.config, *s.placement);
  po.placement_name = s.placement->strategy();
  return make_plan(s.config, po).ranks.at(0);
}

// ---------------------------------------------------------------------------------- commands

int cmd_plan(const std::string& model, int ranks, const std::string& placement, int64_t batch,
             int64_t context, double gpu_mem_gib, const std::string& backend,
             const std::string& json, int rank) {
  ModelConfig config = load_model_config(model);
  PlanOptions po;
  po.kv_bytes = backend == "cpu" ? 4 : 2;
  po.batch = batch;
  po.context = context;
  po.gpu_mem_gib = gpu_mem_gib;
  if (ranks > 0) po.ranks = {ranks};
  if (!placement.empty()) {
    // Expert counts per rank come from the placement, for the one world size it was written for.
    parallel::PlacementSpec spec = parallel::load_placement_spec(placement);
    const int n = spec.num_ranks ? *spec.num_ranks : (ranks > 0 ? ranks : 0);
    MOE_CHECK_AS("config", n > 0,
                 "{}: say how many ranks the placement is for (key 'ranks' or --ranks)", placement);
    parallel::Placement p = parallel::Placement::build(spec, config.moe_layers(),
                                                       static_cast<int>(config.num_experts), n);
    po.ranks = {n};
    po.expert_slots_per_rank = expert_slots_per_rank(config, p);
    po.placement_name = p.strategy();
  }
  PlanReport report = make_plan(config, po);
  if (rank == 0) {
    fmt::print("{}", format_plan(report));
    if (!json.empty()) write_json(json, plan_to_json(report));
  }
  return 0;
}

int cmd_forward(const CommonOptions& o, const std::string& tokens, const std::string& logits_out) {
  // Parse once before building anything so a bad --tokens fails fast on every rank alike.
  ModelConfig probe = load_model_config(o.model);
  TokenBatch batch = parse_token_batch(tokens, probe.vocab_size);
  check_context_fits(probe, max_length(batch), "--tokens");
  auto s = open_session(o, static_cast<int64_t>(batch.size()), max_length(batch));
  Engine engine(*s->model, *s->comm);
  ForwardOutput out = engine.forward(batch);
  MetricsReport metrics = engine.metrics().reduce(*s->comm, s->model->times());
  if (s->rank() == 0) {
    write_npy_f32(logits_out, out.shape, out.logits);
    if (!o.quiet) {
      fmt::print(stderr, "moe-ep: wrote logits [{}] to {}\n", fmt::join(out.shape, ", "),
                 logits_out);
    }
    if (!o.json.empty()) {
      write_json(o.json, {{"command", "forward"},
                          {"logits_shape", out.shape},
                          {"logits_out", logits_out},
                          {"memory_rank0", memory_json(*s)},
                          {"load_per_rank", s->load_per_rank},
                          {"metrics", metrics.to_json(true)}});
    }
  }
  return 0;
}

int cmd_generate(const CommonOptions& o, const std::string& tokens, int64_t max_new) {
  ModelConfig probe = load_model_config(o.model);
  TokenBatch batch = parse_token_batch(tokens, probe.vocab_size);
  check_context_fits(probe, max_length(batch) + max_new, "--tokens plus --max-new-tokens");
  auto s = open_session(o, static_cast<int64_t>(batch.size()), max_length(batch) + max_new);
  Engine engine(*s->model, *s->comm);
  GenerateOutput out = engine.generate(batch, max_new);
  MetricsReport metrics = engine.metrics().reduce(*s->comm, s->model->times());
  if (s->rank() == 0) {
    for (const auto& seq : out.tokens) fmt::print("{}\n", fmt::join(seq, ","));
    if (!o.json.empty()) {
      write_json(o.json, {{"command", "generate"},
                          {"tokens", out.tokens},
                          {"prefill_s", out.prefill_s},
                          {"decode_s", out.decode_s},
                          {"memory_rank0", memory_json(*s)},
                          {"load_per_rank", s->load_per_rank},
                          {"metrics", metrics.to_json(true)}});
    }
  }
  return 0;
}

int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  }
  return 0;
}

// The GEMM shapes one MoE/dense layer of this rank's prefill runs, for the sgemm yardstick.
std::vector<kernels::cpu::GemmShape> prefill_shapes(const Model& m, int64_t tokens,
                                                    const MetricsReport& metrics, int rank,
                                                    const parallel::Placement& placement) {
  const ModelShapes& s = m.shapes();
  std::vector<kernels::cpu::GemmShape> shapes;
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
    // Rows each local expert computed in the prefill step (from the reduced load metrics).
    for (const auto& load : metrics.loads) {
      if (load.step != 0 || load.layer != l) continue;
      for (int e : placement.layer(static_cast<int>(l)).rank_experts[rank]) {
        const int64_t replicas =
            static_cast<int64_t>(placement.layer(static_cast<int>(l)).expert_slots[e].size());
        const int64_t rows = load.tokens_per_expert[static_cast<size_t>(e)] / replicas;
        shapes.push_back({rows, s.expert_inter, s.hidden, 2});
        shapes.push_back({rows, s.hidden, s.expert_inter});
      }
    }
  }
  return shapes;
}

int cmd_run(const std::string& config_path, const std::vector<std::string>& sets,
            CommonOptions o, const CLI::App& cmd) {
  RunConfig rc = load_run_config(config_path, sets);
  o.model = rc.model;
  if (o.weights.empty()) o.weights = rc.weights;
  if (o.placement.empty()) o.placement = rc.placement;
  if (cmd.count("--backend") == 0) o.backend = rc.backend;
  if (o.comm.empty()) o.comm = rc.comm;
  if (o.threads == 0) o.threads = static_cast<int>(rc.threads);
  if (cmd.count("--timeout") == 0) o.timeout_s = rc.timeout_s;
  const Workload& w = rc.workload;
  check_context_fits(load_model_config(o.model), w.prompt_len + w.decode_steps,
                     fmt::format("{}: workload.prompt_len + workload.decode_steps", rc.source));

  const int64_t context = w.prompt_len + std::max<int64_t>(w.decode_steps, 1);
  auto s = open_session(o, w.num_sequences, context);
  // Deterministic prompts: sequence i from (seed, i), whatever the world size.
  TokenBatch prompts(static_cast<size_t>(w.num_sequences));
  for (int64_t i = 0; i < w.num_sequences; ++i) {
    std::mt19937_64 rng(w.seed * 1000003ull + static_cast<uint64_t>(i));
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(s->config.vocab_size - 1));
    for (int64_t t = 0; t < w.prompt_len; ++t) prompts[i].push_back(tok(rng));
  }
  Engine engine(*s->model, *s->comm);
  s->comm->barrier();
  GenerateOutput out = engine.generate(prompts, std::max<int64_t>(w.decode_steps, 1));
  MetricsReport metrics = engine.metrics().reduce(*s->comm, s->model->times());

  // Memory: max over ranks.
  std::vector<int64_t> mem{
      s->model->expert_bytes(),
      s->model->dense_bytes(),
      s->model->kv_cache_bytes(),
      static_cast<int64_t>(s->backend->peak_allocated_bytes()),
      peak_rss_bytes(),
      s->device_used_at_open < 0 ? -1 : s->backend->device_used_bytes() - s->device_used_at_open};
  s->comm->all_reduce<int64_t>(mem, parallel::ReduceOp::kMax);
  const RankMemory plan = planned_memory(*s, w.num_sequences, context);

  const int64_t prefill_tokens = w.num_sequences * w.prompt_len;
  const int64_t decode_tokens = w.num_sequences * (std::max<int64_t>(w.decode_steps, 1) - 1);
  const double prefill_tps = prefill_tokens / out.prefill_s;
  const double decode_tps = out.decode_s > 0 ? decode_tokens / out.decode_s : 0.0;
  const double forward_gflops = engine.prefill_flops() / out.prefill_s * 1e-9;

  // Yardstick: plain cblas_sgemm over the same GEMM shapes as rank 0's prefill, same threads.
  double sgemm_gflops = 0;
  if (rc.compare_sgemm && o.backend == "cpu") {
    int64_t my_tokens = 0;
    for (int64_t i = s->rank(); i < w.num_sequences; i += s->comm->size()) my_tokens += w.prompt_len;
    auto shapes = prefill_shapes(*s->model, my_tokens, metrics, s->rank(), *s->placement);
    shapes.push_back({(w.num_sequences + s->comm->size() - 1) / s->comm->size(),
                      s->config.vocab_size, s->config.hidden_size});
    if (s->rank() == 0) sgemm_gflops = kernels::cpu::measure_sgemm(shapes).gflops();
  }

  if (s->rank() == 0) {
    const int N = s->comm->size();
    fmt::print("moe-ep run: {} on {} rank(s), backend {}, placement {}\n", s->config.name, N,
               s->backend->name(), s->placement->strategy());
    fmt::print("workload     {} sequences x {} prompt tokens, {} decode steps\n",
               w.num_sequences, w.prompt_len, w.decode_steps);
    fmt::print("load         {:.2f} s\n", s->load_s);
    fmt::print("prefill      {:.4f} s   {:.1f} tokens/s   {:.2f} GFLOP/s (all ranks)\n",
               out.prefill_s, prefill_tps, forward_gflops);
    if (sgemm_gflops > 0) {
      fmt::print("sgemm        {:.2f} GFLOP/s per rank on rank 0's prefill GEMM shapes "
                 "(forward per rank: {:.2f} GFLOP/s = {:.0f}% of sgemm)\n",
                 sgemm_gflops, forward_gflops / N, 100.0 * forward_gflops / N / sgemm_gflops);
    }
    if (!out.decode_step_s.empty()) {
      fmt::print("decode       {:.4f} s   {:.1f} tokens/s   step first {:.2f} ms, last {:.2f} ms\n",
                 out.decode_s, decode_tps, out.decode_step_s.front() * 1e3,
                 out.decode_step_s.back() * 1e3);
    }
    fmt::print("memory       per rank max: experts {:.2f} MB, dense replica {:.2f} MB, KV cache "
               "{:.2f} MB, backend peak {:.2f} MB, RSS peak {:.2f} MB\n",
               mem[0] / 1e6, mem[1] / 1e6, mem[2] / 1e6, mem[3] / 1e6, mem[4] / 1e6);
    const double plan_mb = plan.total_bytes / 1e6;
    fmt::print(
        "vs plan      `moe-ep plan` predicts {:.2f} MB for the largest rank (weights {:.2f}, "
        "KV {:.2f}, buffers {:.2f} at worst-case routing); backend peak = {:.1f}% of it{}\n",
        plan_mb, (plan.dense_replica_bytes + plan.expert_shard_bytes) / 1e6,
        plan.kv_cache_bytes / 1e6, (plan.activation_buffer_bytes + plan.communication_bytes) / 1e6,
        100.0 * mem[3] / plan.total_bytes,
        mem[5] < 0 ? std::string()
                   : fmt::format("; device memory in use grew by {:.2f} MB = {:.1f}% of it "
                                 "(cudaMemGetInfo, whole device)",
                                 mem[5] / 1e6, 100.0 * mem[5] / plan.total_bytes));
    fmt::print("{}", metrics.summary());
    if (!o.json.empty()) {
      nlohmann::json j = {{"command", "run"},
                          {"model", s->config.name},
                          {"ranks", N},
                          {"backend", s->backend->name()},
                          {"placement", s->placement->strategy()},
                          {"blas_threads", kernels::cpu::blas_threads()},
                          {"workload",
                           {{"num_sequences", w.num_sequences},
                            {"prompt_len", w.prompt_len},
                            {"decode_steps", w.decode_steps},
                            {"seed", w.seed}}},
                          {"load_s", s->load_s},
                          {"prefill_s", out.prefill_s},
                          {"prefill_tokens_per_s", prefill_tps},
                          {"prefill_gflops", forward_gflops},
                          {"sgemm_gflops_per_rank", sgemm_gflops},
                          {"decode_s", out.decode_s},
                          {"decode_tokens_per_s", decode_tps},
                          {"decode_step_s", out.decode_step_s},
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
                          {"load_per_rank", s->load_per_rank},
                          {"metrics", metrics.to_json(true)}};
      write_json(o.json, j);
    }
  }
  return 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{
      "moe-ep: run Mixture-of-Experts transformers (Qwen3-MoE) across ranks with expert "
      "parallelism.\nEvery rank holds the dense part and a shard of the experts; tokens travel to "
      "their experts by all-to-all.\nMulti-rank: mpirun -np N moe-ep <command> ... (or "
      "launch/moe-ep-mpi N <command> ...); rank 0 prints and writes files."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every command");

  // plan
  std::string plan_model, plan_placement, plan_json, plan_backend = "cuda";
  int plan_ranks = 0;
  int64_t plan_batch = 1, plan_context = 4096;
  double plan_gpu_mem = 141;
  auto* plan = app.add_subcommand(
      "plan", "Parameters, active parameters, FLOPs per token and per-rank memory for N ranks");
  plan->add_option("--model", plan_model, "Model YAML, config.json or checkpoint directory")
      ->required();
  plan->add_option("--ranks", plan_ranks, "Only this world size (default: 1, 2, 4, 8)")
      ->check(CLI::PositiveNumber);
  plan->add_option("--placement", plan_placement, "Placement YAML: expert counts per rank");
  plan->add_option("--batch", plan_batch, "Sequences in flight, for the KV cache (default 1)")
      ->check(CLI::PositiveNumber);
  plan->add_option("--context", plan_context, "Tokens per sequence, for the KV cache (default 4096)")
      ->check(CLI::PositiveNumber);
  plan->add_option("--gpu-mem-gib", plan_gpu_mem, "GPU memory per rank in GiB (default 141, H200)")
      ->check(CLI::PositiveNumber);
  plan->add_option("--backend", plan_backend,
                   "Backend whose KV cache to size: cuda (bf16, default) | cpu (fp32)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  plan->add_option("--json", plan_json, "Also write the plan as JSON to this file");

  // forward
  CommonOptions fwd_opts;
  std::string fwd_tokens, fwd_out;
  auto* forward = app.add_subcommand(
      "forward", "Prefill sequences and write float32 logits [sequences, max_len, vocab] as .npy "
                 "(rows past a sequence's end are NaN; sequence i runs on rank i mod N)");
  add_common(forward, fwd_opts, true);
  forward->add_option("--tokens", fwd_tokens, "Token ids: sequences separated by ';', ids by ','")
      ->required();
  forward->add_option("--logits-out", fwd_out, "Output .npy file")->required();

  // generate
  CommonOptions gen_opts;
  std::string gen_tokens;
  int64_t gen_max_new = 16;
  auto* generate = app.add_subcommand(
      "generate", "Greedy decoding with the KV cache; prints the new token ids of each sequence");
  add_common(generate, gen_opts, true);
  generate->add_option("--tokens", gen_tokens, "Prompt token ids: sequences ';', ids ','")
      ->required();
  generate->add_option("--max-new-tokens", gen_max_new, "New tokens per sequence (default 16)")
      ->check(CLI::PositiveNumber);

  // run
  CommonOptions run_opts;
  std::string run_config;
  std::vector<std::string> run_sets;
  auto* run = app.add_subcommand(
      "run", "Run a workload (prefill + decode steps) from RUN.yaml and report tokens/s, GFLOP/s, "
             "time per phase, memory and expert load");
  run->add_option("--config", run_config, "Run YAML (configs/bench/*.yaml)")->required();
  run->add_option("--set", run_sets, "Override a key of the run YAML: key=value (repeatable), "
                                     "e.g. --set workload.prompt_len=64");
  add_common(run, run_opts, false);

  int rank = 0;
  if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK")) rank = std::atoi(r);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return rank == 0 ? app.exit(e) : 0;
  } catch (const CLI::CallForAllHelp& e) {
    return rank == 0 ? app.exit(e) : 0;
  } catch (const CLI::ParseError& e) {
    if (rank == 0) app.exit(e);
    return 2;
  }

  if (*plan) {
    return cmd_plan(plan_model, plan_ranks, plan_placement, plan_batch, plan_context, plan_gpu_mem,
                    plan_backend, plan_json, rank);
  }
  if (*forward) return cmd_forward(fwd_opts, fwd_tokens, fwd_out);
  if (*generate) return cmd_generate(gen_opts, gen_tokens, gen_max_new);
  if (*run) return cmd_run(run_config, run_sets, run_opts, *run);
  return 2;
}

}  // namespace moe::runtime
