// Microbenchmark of the CPU kernels (kernels/cpu/ops.h) next to a plain fp32 cblas_sgemm of the
// same shapes (linear with bf16 weights and with the same weights as e4m3 + block scales). Prints
// one fixed table (best-of-N wall time per call); --json FILE and --csv FILE write the same rows.
// Not a test: nothing here passes or fails. Thread count is OpenBLAS's (OPENBLAS_NUM_THREADS).
#include <cblas.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/common/bf16.h"
#include "kernels/common/fp8.h"
#include "kernels/cpu/ops.h"

namespace {

namespace cpu = moe::kernels::cpu;
using moe::bf16;
using moe::bench::rand_bf16;
using moe::bench::rand_f32;

struct Row {
  std::string op, shape;
  double ms = 0, gflops = 0, gbytes = 0;
};

// Best wall time of one call in ms: one warm-up, then repeats until ~min_seconds have passed.
double time_ms(const std::function<void()>& fn, double min_seconds) {
  fn();
  double best = 1e30, total = 0;
  int reps = 0;
  while (reps < 3 || total < min_seconds) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  return best * 1e3;
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t x : d) s += (s.empty() ? "" : "x") + std::to_string(x);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string csv_path, json_path;
  bool quick = false;
  CLI::App app{"CPU kernels next to cblas_sgemm of the same shapes"};
  app.add_option("--csv", csv_path, "Also write the table as CSV");
  app.add_option("--json", json_path, "Also write the table as JSON");
  app.add_flag("--quick", quick, "Shorter timing per op (0.05 s instead of 0.3 s)");
  CLI11_PARSE(app, argc, argv);
  const double min_seconds = quick ? 0.05 : 0.3;
  std::vector<Row> rows;

  // linear vs sgemm: rows x in -> out, plus the mid model's expert shapes and decode GEMVs.
  struct LinearShape {
    int64_t rows, in, out;
  };
  for (LinearShape s : {LinearShape{512, 1024, 2048},
                        {1024, 1024, 1024},
                        {64, 1024, 256},
                        {64, 256, 1024},
                        {16, 1024, 768},
                        {8, 1024, 768},
                        {4, 1024, 768},
                        {3, 1024, 768},
                        {2, 1024, 768},
                        {1, 1024, 2048},
                        {1, 2048, 8192}}) {
    auto x = rand_f32(s.rows * s.in, 1);
    auto w = rand_bf16(s.out * s.in, 2, 0.03f);
    std::vector<float> wf(s.out * s.in);
    cpu::bf16_to_f32(w.data(), s.out * s.in, wf.data());
    std::vector<float> y(s.rows * s.out);
    const double flops = 2.0 * s.rows * s.in * s.out;
    const std::string shape = dims({s.rows, s.in, s.out});
    const double t_sgemm = time_ms(
        [&] {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.rows, s.out, s.in, 1.0f, x.data(),
                      s.in, wf.data(), s.in, 0.0f, y.data(), s.out);
        },
        min_seconds);
    rows.push_back(
        {"sgemm_f32", shape, t_sgemm, flops / t_sgemm * 1e-6, 4.0 * s.out * s.in / t_sgemm * 1e-6});
    const double t_lin = time_ms(
        [&] { cpu::linear(x.data(), w.data(), s.rows, s.in, s.out, y.data()); }, min_seconds);
    rows.push_back(
        {"linear_bf16", shape, t_lin, flops / t_lin * 1e-6, 2.0 * s.out * s.in / t_lin * 1e-6});
    // The same weights as e4m3 + 128 x 128 block scales (kernels/common/fp8.h).
    std::vector<uint8_t> codes(s.out * s.in);
    std::vector<float> scales(moe::kernels::fp8_num_scales(s.out, s.in));
    for (int64_t br = 0; br < moe::kernels::fp8_num_blocks(s.out); ++br) {
      for (int64_t bc = 0; bc < moe::kernels::fp8_num_blocks(s.in); ++bc) {
        moe::kernels::e4m3_quantise_block(wf.data(), s.out, s.in, br, bc, codes.data(),
                                          scales.data());
      }
    }
    const moe::kernels::WeightView w8(codes.data(), scales.data());
    const double t_fp8 =
        time_ms([&] { cpu::linear(x.data(), w8, s.rows, s.in, s.out, y.data()); }, min_seconds);
    const double fp8_bytes = static_cast<double>(codes.size()) + 4.0 * scales.size();
    rows.push_back({"linear_e4m3", shape, t_fp8, flops / t_fp8 * 1e-6, fp8_bytes / t_fp8 * 1e-6});
  }

  // Attention, mid-model geometry (16 heads, 4 kv heads, head_dim 64): prefill and decode.
  {
    moe::kernels::AttentionShape shape{16, 4, 64};
    const int64_t max_len = 1024, qw = 16 * 64, kvw = 4 * 64;
    std::vector<float> kc(max_len * kvw), vc(max_len * kvw);
    moe::kernels::KvCacheView cache{kc.data(), vc.data(), 1, max_len};
    for (int64_t n : {128, 512}) {
      auto q = rand_f32(n * qw, 3), k = rand_f32(n * kvw, 4), v = rand_f32(n * kvw, 5);
      std::vector<float> out(n * qw);
      moe::kernels::AttentionSeq seq{0, n, 0, 0};
      const double t = time_ms(
          [&] { cpu::attention(q.data(), k.data(), v.data(), &seq, 1, shape, cache, out.data()); },
          min_seconds);
      // QK^T and PV over the causal half: 2 * 2 * heads * n^2/2 * head_dim.
      const double flops = 2.0 * 16 * static_cast<double>(n) * n * 64;
      rows.push_back({"attn_prefill", dims({n, 16, 4, 64}), t, flops / t * 1e-6, 0});
    }
    auto q = rand_f32(qw, 6), k = rand_f32(kvw, 7), v = rand_f32(kvw, 8);
    std::vector<float> out(qw);
    moe::kernels::AttentionSeq seq{0, 1, 1000, 0};
    const double t = time_ms(
        [&] { cpu::attention(q.data(), k.data(), v.data(), &seq, 1, shape, cache, out.data()); },
        min_seconds);
    rows.push_back({"attn_decode", "past1000x16x4x64", t, 4.0 * 16 * 1001 * 64 / t * 1e-6,
                    2.0 * 4 * 1001 * kvw / t * 1e-6});
  }

  // Grouped experts, mid model prefill: 1024 tokens, top-4 of 64 experts (64 rows each).
  {
    const int64_t hidden = 1024, inter = 256, experts = 64, tokens = 1024, k = 4;
    std::vector<std::vector<bf16>> w;
    for (int64_t e = 0; e < experts; ++e) w.push_back(rand_bf16(3 * inter * hidden, 10 + e, 0.03f));
    std::vector<moe::kernels::ExpertGroup> groups;
    const int64_t per = tokens * k / experts;
    for (int64_t e = 0; e < experts; ++e) {
      const bf16* base = w[e].data();
      groups.push_back({{base, base + inter * hidden, base + 2 * inter * hidden}, e * per, per});
    }
    std::vector<int32_t> row_index(tokens * k);
    for (int64_t p = 0; p < tokens * k; ++p) row_index[p] = static_cast<int32_t>((p * 7) % tokens);
    auto x = rand_f32(tokens * hidden, 9);
    std::vector<float> out(tokens * k * hidden);
    const double t = time_ms(
        [&] {
          cpu::grouped_expert_swiglu(x.data(), hidden, inter, groups.data(), experts,
                                     row_index.data(), out.data());
        },
        min_seconds);
    const double flops = 2.0 * 3 * tokens * k * hidden * inter;
    rows.push_back({"grouped_experts", "1024tok_top4_of64_1024x256", t, flops / t * 1e-6, 0});
    // The same work as plain fp32 sgemm (no gather, no bf16 conversion): the yardstick.
    std::vector<float> wf(3 * inter * hidden), a(per * inter), b(per * inter);
    cpu::bf16_to_f32(w[0].data(), 3 * inter * hidden, wf.data());
    const double ts = time_ms(
        [&] {
          for (int64_t e = 0; e < experts; ++e) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, per, inter, hidden, 1.0f, x.data(),
                        hidden, wf.data(), hidden, 0.0f, a.data(), inter);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, per, inter, hidden, 1.0f, x.data(),
                        hidden, wf.data() + inter * hidden, hidden, 0.0f, b.data(), inter);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, per, hidden, inter, 1.0f, a.data(),
                        inter, wf.data() + 2 * inter * hidden, inter, 0.0f, out.data(), hidden);
          }
        },
        min_seconds);
    rows.push_back({"sgemm_f32", "same_as_grouped_experts", ts, flops / ts * 1e-6, 0});
  }

  // Row-wise ops on [1024, 1024].
  {
    const int64_t n = 1024, dim = 1024;
    auto x = rand_f32(n * dim, 20);
    auto w = rand_bf16(dim, 21, 1.0f);
    std::vector<float> y(n * dim);
    double t =
        time_ms([&] { cpu::rmsnorm(x.data(), w.data(), n, dim, 1e-6f, y.data()); }, min_seconds);
    rows.push_back({"rmsnorm", dims({n, dim}), t, 0, 8.0 * n * dim / t * 1e-6});
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i);
    t = time_ms([&] { cpu::rope(y.data(), pos.data(), n, 16, 64, 1e6); }, min_seconds);
    rows.push_back({"rope", dims({n, 16, 64}), t, 0, 8.0 * n * dim / t * 1e-6});
    auto logits = rand_f32(n * 64, 22);
    std::vector<int32_t> ids(n * 4);
    std::vector<float> wts(n * 4);
    t = time_ms([&] { cpu::router_topk(logits.data(), n, 64, 4, true, ids.data(), wts.data()); },
                min_seconds);
    rows.push_back({"router_topk", "1024x64_top4", t, 0, 0});
  }

  fmt::print("{:<16} {:<28} {:>10} {:>10} {:>10}\n", "op", "shape", "ms", "GFLOP/s", "GB/s");
  for (const Row& r : rows) {
    fmt::print("{:<16} {:<28} {:>10.4f} {:>10.2f} {:>10.2f}\n", r.op, r.shape, r.ms, r.gflops,
               r.gbytes);
  }
  const char* threads = std::getenv("OPENBLAS_NUM_THREADS");
  fmt::print(
      "(best of repeated calls; GB/s counts weight/input bytes read once; "
      "OPENBLAS_NUM_THREADS={})\n",
      threads != nullptr ? threads : "unset");
  nlohmann::json j;
  j["openblas_num_threads"] = threads != nullptr ? threads : "unset";
  j["rows"] = nlohmann::json::array();
  for (const Row& r : rows) {
    j["rows"].push_back({{"op", r.op},
                         {"shape", r.shape},
                         {"ms", r.ms},
                         {"gflops", r.gflops},
                         {"gbytes_per_s", r.gbytes}});
  }
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    if (!f) {
      fmt::print(stderr, "bench_kernels: cannot write {}\n", json_path);
      return 1;
    }
    f << j.dump(2) << "\n";
  }
  if (!csv_path.empty()) {
    std::ofstream f(csv_path);
    if (!f) {
      fmt::print(stderr, "bench_kernels: cannot write {}\n", csv_path);
      return 1;
    }
    f << "op,shape,ms,gflops,gbytes_per_s\n";
    for (const Row& r : rows) {
      f << fmt::format("{},{},{:.6f},{:.4f},{:.4f}\n", r.op, r.shape, r.ms, r.gflops, r.gbytes);
    }
  }
  return 0;
}
