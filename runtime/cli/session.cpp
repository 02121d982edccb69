// open_session: communicator -> backend (bound to the communicator) -> config -> weights ->
// placement -> model, then the per-rank load report gathered on every rank.
#include "runtime/cli/session.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <thread>

#include "kernels/common/check.h"
#include "kernels/cpu/host.h"
#include "runtime/model/engine.h"

namespace moe::runtime {
namespace {

using Clock = std::chrono::steady_clock;

// OPENBLAS_NUM_THREADS wins when set; otherwise this node's cores are shared among its ranks,
// and no rank runs more threads than the CPUs it is bound to (mpirun binds 1-2 ranks to a core).
int default_threads(int ranks_on_node) {
  if (const char* s = std::getenv("OPENBLAS_NUM_THREADS")) {
    if (std::atoi(s) > 0) return std::atoi(s);
  }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, std::min(kernels::usable_cores(), cores / std::max(1, ranks_on_node)));
}

}  // namespace

Session::~Session() {
  model.reset();
  // Explicit teardown on the normal path only: while an error unwinds, main ends the job and a
  // collective teardown could wait on a rank that is gone.
  if (comm && std::uncaught_exceptions() == 0) comm->shutdown();
}

void log0(const Session& s, bool quiet, const std::string& line) {
  if (s.rank() == 0 && !quiet) fmt::print(stderr, "moe-ep: {}\n", line);
}

namespace {

// Communicator, host threads and backend (bound to the communicator's stream).
void open_compute(Session& s, const ModelOptions& o) {
  const parallel::CommKind comm = o.resolved_comm();
  MOE_CHECK_AS("config",
               !(comm == parallel::CommKind::kNccl && o.backend != kernels::BackendKind::kCuda),
               "--comm nccl needs --backend cuda (NCCL moves device memory)");
  parallel::CommOptions copts;
  copts.timeout_s = o.timeout_s;
  copts.ranks_per_node = o.ranks_per_node;
  s.comm = parallel::make_communicator(comm, copts);
  kernels::set_host_threads(o.threads > 0 ? o.threads : default_threads(s.comm->local_size()));
  kernels::BackendOptions bopts;
  bopts.kind = o.backend;
  bopts.local_rank = s.comm->local_rank();
  bopts.compute_dtype = o.compute_dtype;
  s.backend = kernels::make_backend(bopts);
  parallel::resolve_wire(s.backend->compute_dtype(), o.dispatch_dtype);  // before any weight loads
  s.comm->bind_compute_stream(s.backend->compute_stream());
  s.device_used_at_open = s.backend->device_used_bytes();
}

// Config, weight source and placement; rank 0 prints them.
void open_model_inputs(Session& s, const ModelOptions& o) {
  s.config = load_model_config(o.model);
  const bool model_is_checkpoint = std::filesystem::is_directory(o.model);
  const std::string weights_dir =
      !o.weights.empty() ? o.weights : (model_is_checkpoint ? o.model : "");
  s.from_checkpoint = !weights_dir.empty();
  s.weights = s.from_checkpoint ? open_checkpoint(weights_dir, s.config)
                                : make_synthetic_weights(s.config, s.config.seed);
  if (o.quantize_fp8) {
    const WeightQuantization recipe = WeightQuantization::published_fp8();
    s.weights = quantize_weights(std::move(s.weights), recipe);
    if (!s.config.quantization.fp8) s.config.quantization = recipe;
  }
  parallel::PlacementSpec spec;
  if (!o.placement.empty()) spec = parallel::load_placement_spec(o.placement);
  s.placement = parallel::Placement::build(spec, s.config.moe_layers(),
                                           static_cast<int>(s.config.num_experts), s.size());
  log0(s, o.quiet,
       fmt::format("{}\n  weights: {}", format_config(s.config), s.weights->describe()));
  log0(s, o.quiet,
       fmt::format("{} rank(s) ({}), backend {} ({} compute), comm {}, placement {}, {} compute "
                   "thread(s) per rank",
                   s.size(), s.comm->node_layout().describe(), s.backend->name(),
                   kernels::compute_dtype_name(s.backend->compute_dtype()), s.comm->name(),
                   s.placement->strategy(), kernels::host_threads()));
}

// Rank 0's progress line for loads that take a while (none elsewhere, or when quiet).
Model::Progress load_progress(const Session& s, bool quiet) {
  if (s.rank() != 0 || quiet) return {};
  const auto t0 = Clock::now();
  return [t0, last = t0](int64_t done, int64_t total) mutable {
    const auto now = Clock::now();
    if (now - last < std::chrono::seconds(2) && done < total) return;
    if (done >= total && now - t0 < std::chrono::seconds(2)) return;
    last = now;
    const double secs = std::chrono::duration<double>(now - t0).count();
    fmt::print(stderr, "moe-ep: loading weights (rank 0): {:.2f} / {:.2f} GB ({:.0f}%), {:.1f} s\n",
               done / 1e9, total / 1e9, total > 0 ? 100.0 * done / total : 100.0, secs);
  };
}

// What each rank read (checkpoints) and holds, gathered on every rank (collective).
void gather_load_report(Session& s, bool quiet) {
  const LoadStats ls = s.weights->stats();
  const RankWeights& held = s.model->weights().sizes();
  const std::vector<double> mine{
      static_cast<double>(ls.bytes_read),      static_cast<double>(ls.files_opened),
      static_cast<double>(ls.tensors_read),    s.load_s,
      static_cast<double>(held.dense_bytes()), static_cast<double>(held.expert_bytes()),
      static_cast<double>(held.expert_slots)};
  const int N = s.size();
  std::vector<double> all(mine.size() * static_cast<size_t>(N));
  s.comm->all_gather<double>(mine, all);
  for (int r = 0; r < N; ++r) {
    const double* v = all.data() + r * mine.size();
    s.load_per_rank.push_back({{"rank", r},
                               {"bytes_read", static_cast<int64_t>(v[0])},
                               {"files_opened", static_cast<int64_t>(v[1])},
                               {"tensors_read", static_cast<int64_t>(v[2])},
                               {"load_s", v[3]},
                               {"dense_replica_bytes", static_cast<int64_t>(v[4])},
                               {"expert_shard_bytes", static_cast<int64_t>(v[5])},
                               {"local_experts", static_cast<int64_t>(v[6])}});
    if (s.from_checkpoint) {
      log0(s, quiet,
           fmt::format("rank {}: read {:.2f} MB from {} file(s), {} tensors, {} experts, {:.2f} s",
                       r, v[0] / 1e6, static_cast<int64_t>(v[1]), static_cast<int64_t>(v[2]),
                       static_cast<int64_t>(v[6]), v[3]));
    }
  }
}

}  // namespace

std::unique_ptr<Session> open_session(const ModelOptions& o, int64_t max_seqs, int64_t max_len) {
  auto s = std::make_unique<Session>();
  open_compute(*s, o);
  open_model_inputs(*s, o);
  const auto t0 = Clock::now();
  const int64_t slots = Engine::slots_needed(max_seqs, s->size());
  s->model =
      std::make_unique<Model>(s->config, *s->placement, *s->comm, *s->backend, *s->weights,
                              std::max<int64_t>(slots, 1), max_len, load_progress(*s, o.quiet));
  if (o.graphs) s->model->set_graphs(*o.graphs);
  s->model->set_exchange({{o.dispatch_dtype, o.exchange}, o.overlap});
  s->load_s = std::chrono::duration<double>(Clock::now() - t0).count();
  s->fault = FaultInjection::from_env(s->rank());
  if (!o.trace_out.empty()) s->trace_recorder = std::make_unique<TraceRecorder>(s->config);
  set_routing_hook(*s, nullptr);
  gather_load_report(*s, o.quiet);
  return s;
}

ModelOptions model_options_with_run_config(const ModelOptions& options, const CLI::App& cmd,
                                           const RunConfig& rc) {
  ModelOptions o = options;
  if (o.model.empty()) o.model = rc.model;
  if (o.weights.empty()) o.weights = rc.weights;
  if (o.placement.empty()) o.placement = rc.placement;
  if (cmd.count("--backend") == 0) o.backend = rc.backend;
  if (!o.compute_dtype) o.compute_dtype = rc.compute_dtype;
  if (!o.comm) o.comm = rc.comm;
  if (o.threads == 0) o.threads = static_cast<int>(rc.threads);
  if (cmd.count("--timeout") == 0) o.timeout_s = rc.timeout_s;
  return o;
}

void set_routing_hook(Session& s, RoutingHook* hook) {
  s.routing_source = hook;
  std::vector<RoutingHook*> hooks;
  for (RoutingHook* h : {s.routing_source, static_cast<RoutingHook*>(s.fault.get()),
                         static_cast<RoutingHook*>(s.trace_recorder.get())}) {
    if (h != nullptr) hooks.push_back(h);
  }
  s.model->instrumentation().set_routing_hooks(std::move(hooks));
}

void write_trace_out(Session& s, const ModelOptions& o) {
  if (!s.trace_recorder) return;
  const RoutingTrace trace = s.trace_recorder->gather(*s.comm);
  if (s.rank() != 0) return;
  write_trace(o.trace_out, trace);
  log0(s, o.quiet,
       fmt::format("wrote routing trace ({} tokens x {} MoE layers, top-{}) to {}",
                   trace.num_tokens(0), trace.layers.size(), trace.top_k, o.trace_out));
}

}  // namespace moe::runtime
