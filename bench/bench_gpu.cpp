// Whole-model benchmark of the code users run: runtime::Model built by the session factory
// (communicator -> backend -> synthetic weights -> placement -> model), on the CUDA backend by
// default. Measures decode steps at batch 1/8/64 after a prefill of --context tokens per
// sequence, and one prefill of 1 x --prefill-len tokens. Beside each decode time: the HBM floor,
// the bytes the step must read (dense replica without the embedding table, plus every expert the
// batch's routing touched, as held: bf16, or e4m3 + block scales with --quantize fp8;
// runtime/model/arithmetic.h) over the device's bandwidth; beside the
// prefill: MFU against the dense bf16 peak. Phase times come from the backend's PhaseTimer (CUDA
// events on the GPU). Never a pass/fail test: prints a fixed table, writes JSON (--json).
//
// The session is sized to the device: before it opens, each decode batch's memory (weights, a KV
// cache of batch x max(context + steps, prefill) positions, the buffers of its largest step, from
// the plan arithmetic of runtime/analysis/plan.h) is compared with the device's free memory; the
// batches that do not fit are skipped, and the output says which and why (on an 80 GB card,
// Qwen3-30B-A3B at batch 64 with the 4096-position cache).
//
//   bench_gpu [--model configs/models/qwen3-30b-a3b.yaml] [--backend cuda|cpu] [--batches 1,8,64]
//             [--context 512] [--decode-steps 8] [--prefill-len 4096] [--free-gb GB] [--json FILE]
//             [--quantize fp8]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/common/check.h"
#include "parallel/communicator.h"
#include "parallel/load_stats.h"
#include "runtime/analysis/plan.h"
#include "runtime/cli/options.h"
#include "runtime/cli/session.h"
#include "runtime/io/config.h"
#include "runtime/model/arithmetic.h"
#include "runtime/model/model.h"
#ifdef MOE_EP_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace moe::bench {
namespace {

using Clock = std::chrono::steady_clock;
using runtime::kNumPhases;
using runtime::kPhaseNames;

// H200 SXM: ~4.3 TB/s achievable device copy (4.8 TB/s HBM3e nominal) and ~989 TFLOP/s dense
// bf16 (vendor figures; ANCHORS.md "Hardware (vendor figures)", and measured on the lent H200
// per DEVICE.md: ~4.3 TB/s device copy).
constexpr double kDefaultHbmBytesPerS = 4.3e12;
constexpr double kDefaultPeakFlops = 989e12;

struct BenchOptions {
  runtime::ModelOptions model;
  std::vector<int64_t> batches = {1, 8, 64};
  int64_t context = 512;       // tokens per sequence before the timed decode steps
  int64_t decode_steps = 8;    // timed steps per batch (after one warm-up step)
  int64_t prefill_len = 4096;  // 0: no prefill case
  double hbm_tb_s = kDefaultHbmBytesPerS / 1e12;
  double peak_tflops = kDefaultPeakFlops / 1e12;
  double free_gb = -1;  // > 0: size the batches to this much free memory per rank
};

// One measured case: wall time per step (max over ranks), phases per step (rank 0's timer).
struct CaseResult {
  std::string name;
  int64_t batch = 0, tokens_per_step = 0, steps = 0;
  double step_s = 0;
  double flops_per_step = 0;                 // summed over ranks
  double bytes_floor_per_step = 0;           // decode only: bytes every step must read (rank 0)
  std::array<double, kNumPhases> phase_s{};  // per step
};

// Bytes one step must read from device memory on one rank: the dense replica except the
// embedding table (a decode step reads B of its rows), and each expert some token of the step
// was routed to, once. `job_loads` are the step's loads summed over ranks; with N ranks the
// touched experts are assumed spread evenly (exact for one rank).
double step_bytes_floor(const runtime::ModelConfig& config,
                        const std::vector<parallel::LayerLoad>& job_loads, int num_ranks) {
  const runtime::ParamBreakdown p = runtime::count_params(config);
  const runtime::WeightBytes b = runtime::weight_bytes(config);  // as held: bf16 or FP8
  double bytes = static_cast<double>(b.dense_replica() - b.embedding);
  if (config.tie_word_embeddings) bytes += static_cast<double>(b.embedding);  // the lm_head
  int64_t touched = 0;
  for (const parallel::LayerLoad& load : job_loads) {
    for (int64_t t : load.tokens_per_expert) touched += t > 0 ? 1 : 0;
  }
  const double expert_bytes =
      p.experts > 0 ? static_cast<double>(b.experts) / static_cast<double>(p.experts / p.per_expert)
                    : 0.0;
  return bytes + static_cast<double>(touched) * expert_bytes / num_ranks;
}

// Device memory left unplanned: cuBLAS workspaces, captured graphs, NCCL and allocator slack.
constexpr int64_t kHeadroomBytes = int64_t{3} << 30;

// Free device memory this rank's session may fill: cudaMemGetInfo before the session opens,
// split evenly among the ranks that share a device, the smallest over all ranks; -1 on a host
// backend. Opens (and closes) an MPI communicator of its own for the rank count and local rank,
// and on the GPU a backend to ask.
struct DeviceRoom {
  int64_t free_bytes = -1;
  int num_ranks = 1;
};

DeviceRoom device_room(const runtime::ModelOptions& o) {
  const std::unique_ptr<parallel::Communicator> comm =
      parallel::make_mpi_communicator(parallel::CommOptions{o.timeout_s});
  DeviceRoom room;
  room.num_ranks = comm->size();
#ifdef MOE_EP_HAVE_CUDA
  if (o.backend == kernels::BackendKind::kCuda) {
    kernels::BackendOptions bo;
    bo.kind = kernels::BackendKind::kCuda;
    bo.local_rank = comm->local_rank();
    {
      const std::unique_ptr<kernels::Backend> probe = kernels::make_backend(bo);
      const kernels::CudaBackend* cuda = kernels::as_cuda_backend(probe.get());
      room.free_bytes =
          static_cast<int64_t>(cuda->device_total_bytes()) - cuda->device_used_bytes();
    }
    const int devices = std::max(kernels::cuda_device_count(), 1);
    room.free_bytes /= (comm->local_size() + devices - 1) / devices;
    comm->all_reduce(std::span<int64_t>(&room.free_bytes, 1), parallel::ReduceOp::kMin);
  }
#endif
  comm->shutdown();
  return room;
}

// What the session needs on its most loaded rank for decode batches up to `batch` and a cache of
// max_len positions per sequence (bf16 KV cache: the CUDA backend's).
struct SessionBytes {
  int64_t weights = 0, kv_cache = 0, buffers = 0;
  int64_t total() const { return weights + kv_cache + buffers + kHeadroomBytes; }
};

SessionBytes session_bytes(const runtime::ModelConfig& config, int num_ranks, int64_t batch,
                           int64_t max_len, const BenchOptions& o) {
  // plan.h's estimate of one step of `seqs` sequences x `len` tokens (worst-case routing).
  auto rank_memory = [&](int64_t seqs, int64_t len) {
    runtime::PlanOptions po;
    po.batch = seqs;
    po.context = len;
    po.ranks = {num_ranks};
    po.kv_bytes = 2;
    return runtime::make_plan(config, po).ranks.front();
  };
  const runtime::RankMemory fill = rank_memory(batch, o.context);  // the cache fill step
  SessionBytes b;
  b.weights = fill.dense_replica_bytes + fill.expert_shard_bytes;
  b.kv_cache = rank_memory(batch, max_len).kv_cache_bytes;
  b.buffers = fill.activation_buffer_bytes + fill.communication_bytes;
  if (o.prefill_len > 0) {  // one sequence, on rank 0
    const runtime::RankMemory pre = rank_memory(1, o.prefill_len);
    b.buffers = std::max(b.buffers, pre.activation_buffer_bytes + pre.communication_bytes);
  }
  return b;
}

// The decode batches this device holds: each batch whose session (sized for it, cache max_len
// positions per sequence) fits the free memory; one line per batch skipped, saying why.
struct BatchFit {
  std::vector<int64_t> batches;
  std::vector<std::string> skipped;
};

BatchFit fit_batches(const BenchOptions& o, const runtime::ModelConfig& config,
                     const DeviceRoom& room, int64_t max_len) {
  BatchFit fit;
  if (room.free_bytes < 0) {  // host memory: not sized
    fit.batches = o.batches;
    return fit;
  }
  const int64_t decode_len = o.context + 1 + o.decode_steps;
  for (int64_t batch : o.batches) {
    const SessionBytes need = session_bytes(config, room.num_ranks, batch, max_len, o);
    if (need.total() <= room.free_bytes) {
      fit.batches.push_back(batch);
      continue;
    }
    // The cache length that would hold this batch; the prefill sets it when it is the longest.
    const int64_t kv_per_position = need.kv_cache / max_len;
    const int64_t fits_len =
        kv_per_position > 0 ? (room.free_bytes - need.total() + need.kv_cache) / kv_per_position
                            : 0;
    const std::string hint =
        o.prefill_len > decode_len && fits_len >= decode_len
            ? fmt::format("--prefill-len {} or less would fit it", fits_len)
            : fmt::format("it does not fit this device at --context {}", o.context);
    fit.skipped.push_back(fmt::format(
        "decode b={} skipped: needs {:.2f} GB per rank (weights {:.2f}, KV cache {} x {} "
        "positions {:.2f}, step buffers {:.2f}, headroom {:.2f}) > {:.2f} GB free; {}",
        batch, need.total() / 1e9, need.weights / 1e9,
        (batch + room.num_ranks - 1) / room.num_ranks, max_len, need.kv_cache / 1e9,
        need.buffers / 1e9, kHeadroomBytes / 1e9, room.free_bytes / 1e9, hint));
  }
  MOE_CHECK_AS("bench", !fit.batches.empty(), "no decode batch fits the device: {}",
               fit.skipped.front());
  return fit;
}

class Bench {
 public:
  Bench(const BenchOptions& o, runtime::Session& s) : o_(o), s_(s) {}

  // Sequences of the job spread as the engine does: sequence i on rank i mod N.
  std::vector<int64_t> my_sequences(int64_t num_seqs) const {
    std::vector<int64_t> mine;
    for (int64_t i = s_.rank(); i < num_seqs; i += s_.size()) mine.push_back(i);
    return mine;
  }

  // Deterministic token ids in [1, vocab).
  int32_t token(int64_t seq, int64_t pos) const {
    const uint64_t h =
        (static_cast<uint64_t>(seq) * 1000003u + static_cast<uint64_t>(pos) * 7919u + 12345u) %
        static_cast<uint64_t>(s_.config.vocab_size - 1);
    return static_cast<int32_t>(h + 1);
  }

  // One collective step over `seqs` (this rank's), `len` new tokens each after `past` cached;
  // logits of each sequence's last row only.
  runtime::StepResult step(const std::vector<int64_t>& seqs, int64_t past, int64_t len) {
    std::vector<runtime::SeqStep> batch;
    std::vector<int64_t> logit_rows;
    int64_t row = 0;
    for (size_t slot = 0; slot < seqs.size(); ++slot) {
      runtime::SeqStep q;
      q.sequence = seqs[slot];
      q.cache_slot = static_cast<int64_t>(slot);
      q.past_len = past;
      for (int64_t i = 0; i < len; ++i) q.tokens.push_back(token(seqs[slot], past + i));
      row += len;
      logit_rows.push_back(row - 1);
      batch.push_back(std::move(q));
    }
    return s_.model->step(batch, logit_rows);
  }

  std::array<double, kNumPhases> phases_now() {
    std::array<double, kNumPhases> t{};
    const runtime::PhaseTimes& pt = s_.model->instrumentation().times();
    for (int i = 0; i < kNumPhases; ++i)
      t[static_cast<size_t>(i)] = pt.seconds[static_cast<size_t>(i)];
    return t;
  }

  double max_over_ranks(double v) {
    s_.comm->all_reduce(std::span<double>(&v, 1), parallel::ReduceOp::kMax);
    return v;
  }
  double job_sum(double v) {
    s_.comm->all_reduce(std::span<double>(&v, 1), parallel::ReduceOp::kSum);
    return v;
  }

  // graph: decode steps captured as a device graph and replayed (Model::set_graphs); without,
  // the ordinary eager step (host-planned attention, metadata staged per op), side by side.
  CaseResult decode(int64_t batch, bool graph) {
    s_.model->set_graphs(graph);
    const std::vector<int64_t> seqs = my_sequences(batch);
    step(seqs, 0, o_.context);  // fills the KV cache (not timed)
    step(seqs, o_.context, 1);  // warm-up decode step (a graph's first shape runs eagerly)
    step(seqs, o_.context, 1);  // a graph is captured here (same position: the cache is rewritten)
    CaseResult r;
    r.name = fmt::format("decode b={}{}", batch, graph ? " graph" : "");
    r.batch = batch;
    r.tokens_per_step = batch;
    r.steps = o_.decode_steps;
    const auto before = phases_now();
    double flops = 0;
    std::vector<std::vector<parallel::LayerLoad>> loads;
    s_.comm->barrier();
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < o_.decode_steps; ++i) {
      runtime::StepResult res = step(seqs, o_.context + 1 + i, 1);
      flops += s_.model->instrumentation().last_step_flops();
      loads.push_back(std::move(res.loads));
    }
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    double floor_bytes = 0;
    for (const auto& l : loads) {
      floor_bytes += step_bytes_floor(s_.config, parallel::sum_over_ranks(*s_.comm, l), s_.size());
    }
    const auto after = phases_now();
    const double n = static_cast<double>(o_.decode_steps);
    r.step_s = max_over_ranks(wall) / n;
    r.flops_per_step = job_sum(flops) / n;
    r.bytes_floor_per_step = floor_bytes / n;
    for (size_t p = 0; p < r.phase_s.size(); ++p) r.phase_s[p] = (after[p] - before[p]) / n;
    return r;
  }

  CaseResult prefill(int64_t len) {
    // Sequence 0 only (its rank computes; the others join every collective with no tokens).
    const std::vector<int64_t> seqs =
        s_.rank() == 0 ? std::vector<int64_t>{0} : std::vector<int64_t>{};
    step(seqs, 0, std::min<int64_t>(len, 256));  // warm-up: cuBLAS heuristics, buffers
    CaseResult r;
    r.name = fmt::format("prefill 1x{}", len);
    r.batch = 1;
    r.tokens_per_step = len;
    r.steps = 1;
    const auto before = phases_now();
    s_.comm->barrier();
    const auto t0 = Clock::now();
    step(seqs, 0, len);
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const auto after = phases_now();
    r.step_s = max_over_ranks(wall);
    r.flops_per_step = job_sum(s_.model->instrumentation().last_step_flops());
    for (size_t p = 0; p < r.phase_s.size(); ++p) r.phase_s[p] = after[p] - before[p];
    return r;
  }

 private:
  const BenchOptions& o_;
  runtime::Session& s_;
};

void print_table(const BenchOptions& o, const runtime::Session& s,
                 const std::vector<CaseResult>& cases, const std::string& timing,
                 const std::vector<std::string>& skipped) {
  fmt::print("\n{} on {} ({} rank(s), comm {}), synthetic weights, phase times: {}{}\n",
             s.config.name, s.backend->name(), s.size(), s.comm->name(), timing,
             s.config.quantization.fp8 ? "; weights fp8 (e4m3 + 128 x 128 block scales)" : "");
  fmt::print("HBM floor at {:.2f} TB/s, MFU against {:.0f} TFLOP/s dense bf16\n", o.hbm_tb_s,
             o.peak_tflops);
  fmt::print(
      "\"graph\" rows replay a captured device graph (no phase times inside a graph; the row "
      "above it is the eager step)\n");
  fmt::print("{:<18} {:>7} {:>10} {:>10} {:>10} {:>9} {:>8} |", "case", "tokens", "ms/step",
             "tok/s", "floor ms", "x floor", "MFU %");
  for (const char* n : kPhaseNames) fmt::print(" {:>9}", n);
  fmt::print("   (phase ms/step, rank 0)\n");
  for (const CaseResult& c : cases) {
    const double floor_ms = c.bytes_floor_per_step / (o.hbm_tb_s * 1e12) * 1e3;
    const double mfu = c.flops_per_step / c.step_s / (o.peak_tflops * 1e12) * 100.0;
    fmt::print("{:<18} {:>7} {:>10.3f} {:>10.1f} {:>10} {:>9} {:>8.2f} |", c.name,
               c.tokens_per_step, c.step_s * 1e3, c.tokens_per_step / c.step_s,
               c.bytes_floor_per_step > 0 ? fmt::format("{:.4g}", floor_ms) : "-",
               c.bytes_floor_per_step > 0 ? fmt::format("{:.2f}", c.step_s * 1e3 / floor_ms) : "-",
               mfu);
    for (double p : c.phase_s) fmt::print(" {:>9.3f}", p * 1e3);
    fmt::print("\n");
  }
  for (const std::string& line : skipped) fmt::print("{}\n", line);
}

nlohmann::json to_json(const BenchOptions& o, const runtime::Session& s,
                       const std::vector<CaseResult>& cases, const std::string& timing) {
  nlohmann::json j;
  j["model"] = s.config.name;
  j["backend"] = s.backend->name();
  j["comm"] = s.comm->name();
  j["ranks"] = s.size();
  j["timing_method"] = timing;
  j["context"] = o.context;
  j["hbm_bytes_per_s"] = o.hbm_tb_s * 1e12;
  j["peak_flops"] = o.peak_tflops * 1e12;
  j["load_s"] = s.load_s;
  j["cases"] = nlohmann::json::array();
  for (const CaseResult& c : cases) {
    nlohmann::json jc;
    jc["name"] = c.name;
    jc["batch"] = c.batch;
    jc["tokens_per_step"] = c.tokens_per_step;
    jc["steps"] = c.steps;
    jc["step_s"] = c.step_s;
    jc["tokens_per_s"] = c.tokens_per_step / c.step_s;
    jc["flops_per_step"] = c.flops_per_step;
    jc["mfu"] = c.flops_per_step / c.step_s / (o.peak_tflops * 1e12);
    if (c.bytes_floor_per_step > 0) {
      jc["hbm_floor_bytes"] = c.bytes_floor_per_step;
      jc["hbm_floor_s"] = c.bytes_floor_per_step / (o.hbm_tb_s * 1e12);
    }
    for (int p = 0; p < kNumPhases; ++p) {
      jc["phase_s"][kPhaseNames[static_cast<size_t>(p)]] = c.phase_s[static_cast<size_t>(p)];
    }
    j["cases"].push_back(jc);
  }
  return j;
}

int run(int argc, char** argv) {
  BenchOptions o;
  o.model.model = "configs/models/qwen3-30b-a3b.yaml";
  o.model.backend = kernels::BackendKind::kCuda;
  CLI::App app{"moe-ep whole-model benchmark (decode at several batches, one long prefill)"};
  runtime::add_model_options(&app, o.model, /*model_required=*/false);
  app.add_option("--batches", o.batches, "Decode batch sizes (sequences)")
      ->delimiter(',')
      ->check(runtime::at_least(1));
  app.add_option("--context", o.context, "Tokens per sequence before the timed decode steps")
      ->check(runtime::at_least(1));
  app.add_option("--decode-steps", o.decode_steps, "Timed decode steps per batch")
      ->check(runtime::at_least(1));
  app.add_option("--prefill-len", o.prefill_len, "Tokens of the prefill case (0: none)")
      ->check(runtime::at_least(0));
  app.add_option("--hbm-tb-s", o.hbm_tb_s, "Device memory bandwidth for the floor, TB/s")
      ->check(runtime::greater_than(0));
  app.add_option("--peak-tflops", o.peak_tflops, "Dense bf16 peak for MFU, TFLOP/s")
      ->check(runtime::greater_than(0));
  app.add_option("--free-gb", o.free_gb,
                 "Size the decode batches to this much free memory per rank, GB (default: the "
                 "CUDA device's free memory; the CPU backend is not sized)")
      ->check(runtime::greater_than(0));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  const int64_t max_len = std::max(o.context + 1 + o.decode_steps, o.prefill_len);
  DeviceRoom room = device_room(o.model);
  if (o.free_gb > 0) room.free_bytes = static_cast<int64_t>(o.free_gb * 1e9);
  const BatchFit fit = fit_batches(o, runtime::load_model_config(o.model.model), room, max_len);
  const int64_t max_batch = *std::max_element(fit.batches.begin(), fit.batches.end());
  auto s = runtime::open_session(o.model, max_batch, max_len);
  runtime::log0(*s, o.model.quiet, fmt::format("weights ready in {:.1f} s", s->load_s));

  Bench bench(o, *s);
  std::vector<CaseResult> cases;
  const bool graphs = s->model->graphs_on() && s->backend->graphs() != nullptr;
  for (int64_t b : fit.batches) {
    cases.push_back(bench.decode(b, false));
    if (graphs) cases.push_back(bench.decode(b, true));
  }
  s->model->set_graphs(graphs);
  if (o.prefill_len > 0) cases.push_back(bench.prefill(o.prefill_len));

  const std::string timing = s->model->instrumentation().timing_method();
  if (s->rank() == 0) {
    print_table(o, *s, cases, timing, fit.skipped);
    if (!o.model.json.empty()) {
      nlohmann::json j = to_json(o, *s, cases, timing);
      j["device_free_bytes"] = room.free_bytes;
      j["skipped"] = fit.skipped;
      std::ofstream f(o.model.json);
      MOE_CHECK_AS("io", f.good(), "cannot write {}", o.model.json);
      f << j.dump(2) << "\n";
    }
  }
  return 0;
}

}  // namespace
}  // namespace moe::bench

int main(int argc, char** argv) {
  return moe::bench::mpi_main(argc, argv, "bench_gpu", moe::bench::run);
}
