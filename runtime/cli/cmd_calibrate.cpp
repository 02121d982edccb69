// `moe-ep calibrate --out H.yaml`: measures this machine's hardware profile (runtime/analysis/
// calibrate.h) and writes it. Under `mpirun -np N` it adds the communicator measured at N ranks;
// --merge keeps an existing profile's compute numbers and other rank counts, so
//   moe-ep calibrate --out H.yaml && mpirun -np 2 moe-ep calibrate --out H.yaml --merge && ...
// builds one profile for N = 1, 2, 4. Rank 0 writes.
#include <fmt/format.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>

#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "kernels/cpu/host.h"
#include "runtime/analysis/calibrate.h"
#include "runtime/analysis/hardware.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"
#include "runtime/cli/report.h"

namespace moe::runtime {
namespace {

struct CalibrateArgs {
  std::string out, model = "configs/models/mid.yaml", name = "this-machine", json;
  kernels::BackendKind backend = kernels::BackendKind::kCpu;
  bool merge = false;
  int threads = 1, cores = 0;
  double timeout_s = 120;
};

// The default shapes: configs/models/mid.yaml under the working directory, else beside the
// source tree the executable was built in (build/<dir>/launch/moe-ep -> ../../..).
std::string default_model(const std::string& given) {
  namespace fs = std::filesystem;
  if (fs::exists(given)) return given;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path() / ".." / ".." / ".." / given;
    if (fs::exists(beside)) return beside.string();
  }
  return given;
}

int run_calibrate(const CalibrateArgs& a, bool model_given) {
  const auto t0 = std::chrono::steady_clock::now();
  HardwareProfile base;
  if (a.merge) {
    MOE_CHECK_AS("config", std::filesystem::exists(a.out),
                 "--merge: '{}' does not exist yet (run calibrate once without --merge)", a.out);
    base = load_hardware_profile(a.out);
  }
  const std::string model = model_given ? a.model : default_model(a.model);
  MOE_CHECK_AS("config", std::filesystem::exists(model),
               "--model: '{}' not found (run from the repository root, or name a model YAML)",
               model);
  const ModelConfig shapes = load_model_config(model);
  parallel::CommOptions co;
  co.timeout_s = a.timeout_s;
  auto comm = parallel::make_host_communicator(co);
  kernels::BackendOptions bo;
  bo.kind = a.backend;
  bo.local_rank = comm->local_rank();
  auto backend = kernels::make_backend(bo);
  CalibrateOptions o;
  o.measure_compute = !a.merge;
  o.threads = a.threads;
  o.cores = a.cores;
  o.name = a.merge ? base.name : a.name;
  const CalibrateResult r = calibrate(*backend, *comm, shapes, base, o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int rank = comm->rank();
  const int size = comm->size();
  comm->shutdown();
  if (rank != 0) return 0;

  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  std::vector<std::string> header = {
      fmt::format("Measured by `moe-ep calibrate` ({} backend, shapes of {}), {}.",
                  kernels::backend_kind_name(a.backend), shapes.name, date),
      "compute: backend linear at 1-512 rows (gemm_table; weight read = the 1-row time),",
      "expert_swiglu at 1-64 rows per expert (grouped_table), attention over 128 tokens,",
      fmt::format("add_inplace (bandwidth; 16 elements = per-op cost), the dispatcher's layout; "
                  "{} thread(s), rates per core.",
                  a.threads),
      "comm.measured: all_to_all of counts (collective_us) and all_to_all_v of 4 KiB-8 MiB per",
      "peer, fitted time = c + bytes / bandwidth; one entry per rank count (--merge adds one)."};
  std::ofstream f(a.out);
  MOE_CHECK_AS("io", f.good(), "--out: cannot write '{}'", a.out);
  f << hardware_profile_yaml(r.profile, header);
  f.close();
  load_hardware_profile(a.out);  // what was written reads back
  const HardwareProfile& h = r.profile;
  fmt::print("moe-ep calibrate: {} rank(s), {:.1f} s -> {}\n", size, seconds, a.out);
  fmt::print(
      "GEMM GFLOP/s per core: prefill {:.2f}, decode {:.2f}, grouped {:.2f}, attention "
      "{:.2f}; weight read {:.2f} GB/s; memory {:.2f} GB/s; per-op {:.2f} us; layout "
      "{:.1f} ns/pair\n",
      h.prefill_gemm_gflops, h.decode_gemm_gflops, h.grouped_gemm_gflops, h.attention_gflops,
      h.weight_read_gbps, h.memory_bandwidth_gbps, h.launch_overhead_us, h.layout_ns_per_pair);
  for (const MeasuredComm& m : h.measured) {
    fmt::print(
        "comm at {} ranks: collective {:.1f} us, latency {:.1f} us per peer, {:.2f} GB/s, "
        "wait after compute {:.1f} us\n",
        m.ranks, m.collective_overhead_us, m.link.latency_us, m.link.bandwidth_gbps, m.sync_us);
    if (m.ranks_per_node > 0) {
      fmt::print(
          "  that link inside nodes of {} ranks; between nodes {:.1f} us per peer, {:.2f} GB/s; "
          "a node's own collective {:.1f} us, wait after compute {:.1f} us\n",
          m.ranks_per_node, m.inter_link.latency_us, m.inter_link.bandwidth_gbps,
          m.node_collective_overhead_us, m.node_sync_us);
    }
  }
  if (!a.json.empty()) write_json(a.json, r.samples);
  return 0;
}

}  // namespace

Command add_calibrate_command(CLI::App& app) {
  auto a = std::make_shared<CalibrateArgs>();
  auto* cmd = app.add_subcommand(
      "calibrate",
      "Measure this machine's hardware profile (GEMM rates, memory bandwidth, per-op cost, "
      "communicator at this job's rank count) and write it as YAML for `predict`");
  cmd->add_option("--out", a->out, "Profile YAML to write")->required();
  cmd->add_flag("--merge", a->merge,
                "Keep --out's compute numbers and other rank counts; add this rank count's "
                "communicator");
  cmd->add_option("--model", a->model,
                  "Model whose shapes the GEMM probes use (default configs/models/mid.yaml)");
  cmd->add_option("--name", a->name, "Profile name (default this-machine)");
  cmd->add_option("--threads", a->threads, "Host threads while measuring compute (default 1)")
      ->check(at_least(1));
  cmd->add_option(
         "--cores", a->cores,
         "CPU cores the ranks of a node share (default: the cores this process may run on)")
      ->check(at_least(1));
  add_choice(cmd, "--backend", a->backend, backend_choices(), "Backend to measure: cpu | cuda");
  cmd->add_option("--timeout", a->timeout_s, "Collective timeout in seconds")
      ->check(greater_than(0));
  cmd->add_option("--json", a->json, "Also write every raw measurement as JSON");
  return {cmd, [a, cmd] { return run_calibrate(*a, cmd->count("--model") > 0); }};
}

}  // namespace moe::runtime
