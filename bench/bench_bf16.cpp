// Expert grouped GEMM (expert_swiglu) in the CPU backend's bf16 mode next to (a) one plain
// oneDNN bf16 matmul per projection over all rows at once (the same FLOPs, no grouping) and (b)
// the fp32 mode (OpenBLAS), with a plain fp32 sgemm of the same FLOPs for scale. Prints the ISA
// oneDNN uses, one fixed table, and writes JSON (--json). Not a test: nothing passes or fails.
#include <cblas.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"
#include "kernels/common/bf16.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/onednn_gemm.h"
#include "tests/common/backend_calls.h"

namespace {

using moe::bf16;
namespace kernels = moe::kernels;
using moe::bench::rand_bf16;
using moe::bench::rand_f32;

// Best wall time of one call in seconds: one warm-up, then repeats until ~min_seconds passed.
double best_seconds(const std::function<void()>& fn, double min_seconds) {
  fn();
  double best = 1e30, total = 0;
  int reps = 0;
  while (reps < 3 || total < min_seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bf16 vs fp32 expert grouped GEMM on the CPU backend"};
  int64_t experts = 64, rows = 64, hidden = 1024, inter = 256;
  double min_seconds = 0.5;
  std::string json_path;
  app.add_option("--experts", experts, "expert groups per call")->check(CLI::PositiveNumber);
  app.add_option("--rows", rows, "rows (tokens) per expert group")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden, "hidden size H")->check(CLI::PositiveNumber);
  app.add_option("--inter", inter, "expert intermediate size I")->check(CLI::PositiveNumber);
  app.add_option("--min-seconds", min_seconds, "time each case at least this long");
  app.add_option("--json", json_path, "write the results as JSON");
  CLI11_PARSE(app, argc, argv);

  const auto& info = kernels::cpu::onednn_info();
  fmt::print("oneDNN: {}, effective ISA {}, bf16 matmul: {} ({})\n",
             info.built_with_onednn ? "built in" : "not built in", info.isa,
             info.has_bf16_matmul ? "yes" : "NO (no bf16 units for oneDNN 2.x on this CPU)",
             info.probe_impl);

  const int64_t total_rows = experts * rows;
  const double flops = 2.0 * static_cast<double>(total_rows) * 3.0 * hidden * inter;
  // Per expert: gate, up [I, H] and down [H, I]; x [total_rows, H]; groups of `rows` entries.
  std::vector<std::vector<bf16>> gate, up, down;
  std::vector<kernels::ExpertGroup> groups;
  for (int64_t e = 0; e < experts; ++e) {
    gate.push_back(rand_bf16(inter * hidden, 10 + e, 0.05f));
    up.push_back(rand_bf16(inter * hidden, 1000 + e, 0.05f));
    down.push_back(rand_bf16(hidden * inter, 2000 + e, 0.05f));
  }
  for (int64_t e = 0; e < experts; ++e) {
    groups.push_back({{gate[e].data(), up[e].data(), down[e].data()}, e * rows, rows});
  }
  const auto x = rand_f32(total_rows * hidden, 3);
  std::vector<int32_t> row_index(static_cast<size_t>(total_rows));
  for (int64_t i = 0; i < total_rows; ++i) row_index[i] = static_cast<int32_t>(i);
  std::vector<float> out(static_cast<size_t>(total_rows * hidden));

  struct Case {
    std::string name;
    double seconds = 0;  // 0: not run
    std::string note;
  };
  std::vector<Case> cases;
  auto grouped = [&](kernels::Backend& be) {
    return best_seconds(
        [&] {
          moe::test::grouped_swiglu(be, x.data(), hidden, inter, groups.data(), experts,
                                    row_index.data(), out.data());
        },
        min_seconds);
  };
  auto bf16_backend = kernels::make_cpu_backend(kernels::ComputeDtype::kBF16);
  cases.push_back({"grouped_swiglu bf16", grouped(*bf16_backend),
                   info.has_bf16_matmul ? "oneDNN matmul per group and projection"
                                        : "fallback: fixed-order fp32 dot-product GEMM"});

  // The same FLOPs as one plain oneDNN bf16 matmul per projection over all rows.
  Case plain{"plain oneDNN bf16 matmul", 0, "oneDNN has no bf16 matmul here"};
  if (info.has_bf16_matmul) {
    kernels::cpu::OnednnBf16Gemm gemm;
    const int64_t mp = kernels::cpu::OnednnBf16Gemm::padded_rows(total_rows);
    const auto a = rand_bf16(mp * std::max(hidden, inter), 4, 1.0f);
    std::vector<float> c(static_cast<size_t>(mp * std::max(hidden, inter)));
    plain.seconds = best_seconds(
        [&] {
          gemm.run(a.data(), gate[0].data(), total_rows, inter, hidden, c.data(), false);
          gemm.run(a.data(), up[0].data(), total_rows, inter, hidden, c.data(), false);
          gemm.run(a.data(), down[0].data(), total_rows, hidden, inter, c.data(), false);
        },
        min_seconds);
    plain.note =
        fmt::format("3 matmuls [{} x {}] x [{} x {}]^T", total_rows, hidden, inter, hidden);
  }
  cases.push_back(plain);

  auto fp32_backend = kernels::make_cpu_backend(kernels::ComputeDtype::kF32);
  cases.push_back({"grouped_swiglu fp32", grouped(*fp32_backend), "OpenBLAS sgemm per group"});
  {
    const auto a = rand_f32(total_rows * std::max(hidden, inter), 5);
    const auto b = rand_f32(hidden * inter, 6);
    std::vector<float> c(static_cast<size_t>(total_rows * std::max(hidden, inter)));
    auto sgemm = [&](int64_t n, int64_t k) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(total_rows),
                  static_cast<int>(n), static_cast<int>(k), 1.0f, a.data(), static_cast<int>(k),
                  b.data(), static_cast<int>(k), 0.0f, c.data(), static_cast<int>(n));
    };
    cases.push_back({"plain sgemm fp32",
                     best_seconds(
                         [&] {
                           sgemm(inter, hidden);
                           sgemm(inter, hidden);
                           sgemm(hidden, inter);
                         },
                         min_seconds),
                     "3 cblas_sgemm over all rows"});
  }

  fmt::print("experts {} x rows {} (= {} rows), hidden {}, inter {}: {:.3f} GFLOP per call\n",
             experts, rows, total_rows, hidden, inter, flops * 1e-9);
  fmt::print("{:<26} {:>10} {:>10}  {}\n", "case", "ms", "GFLOP/s", "note");
  nlohmann::json j;
  j["isa"] = info.isa;
  j["onednn_bf16_matmul"] = info.has_bf16_matmul;
  j["onednn_probe_impl"] = info.probe_impl;
  j["shape"] = {
      {"experts", experts}, {"rows", rows}, {"hidden", hidden}, {"inter", inter}, {"flops", flops}};
  for (const Case& c : cases) {
    const double gflops = c.seconds > 0 ? flops / c.seconds * 1e-9 : 0.0;
    fmt::print("{:<26} {:>10} {:>10}  {}\n", c.name,
               c.seconds > 0 ? fmt::format("{:.2f}", c.seconds * 1e3) : "-",
               c.seconds > 0 ? fmt::format("{:.1f}", gflops) : "-", c.note);
    j["cases"].push_back(
        {{"name", c.name}, {"seconds", c.seconds}, {"gflops", gflops}, {"note", c.note}});
  }
  auto rate = [&](const std::string& name) {
    for (const Case& c : cases) {
      if (c.name == name && c.seconds > 0) return flops / c.seconds;
    }
    return 0.0;
  };
  const double g_bf16 = rate("grouped_swiglu bf16"), g_plain = rate("plain oneDNN bf16 matmul"),
               g_fp32 = rate("grouped_swiglu fp32");
  if (g_plain > 0) fmt::print("grouped bf16 / plain oneDNN bf16: {:.2f}x\n", g_bf16 / g_plain);
  fmt::print("grouped bf16 / grouped fp32: {:.2f}x\n", g_bf16 / g_fp32);
  j["ratio_grouped_bf16_vs_plain_onednn"] = g_plain > 0 ? g_bf16 / g_plain : 0.0;
  j["ratio_grouped_bf16_vs_fp32"] = g_bf16 / g_fp32;
  if (!json_path.empty()) std::ofstream(json_path) << j.dump(2) << "\n";
  return 0;
}
