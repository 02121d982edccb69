// Dispatch + combine of the Dispatcher against a raw MPI_Alltoallv moving the same bytes on the
// same ranks (the floor any all-to-all-based exchange pays). Run under mpirun:
//   mpirun -np N bench_dispatch [--tokens T] [--hidden H] [--experts E] [--top-k K] [--iters I]
//                               [--json FILE]
// Routing is random (seeded per rank); expert compute is replaced by an untimed fill of the
// expert outputs, so only layout, data movement and the combine sums are timed. Ours and the raw
// exchange alternate, each after a barrier; median over iterations, slowest rank. A benchmark,
// not a test: it prints a table and writes JSON; it asserts nothing.
// Note: bench/ uses MPI directly only for the raw baseline; the runtime never does.
#include <fmt/format.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "parallel/placement.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  moe::parallel::MpiSession mpi(&argc, &argv);
  moe::set_error_rank(mpi.world_rank());
  int64_t tokens = 256, hidden = 1024;
  int experts = 64, top_k = 4, iters = 20;
  std::string json_path;
  CLI::App app{"dispatch+combine vs raw MPI_Alltoallv of the same bytes"};
  app.add_option("--tokens", tokens, "Tokens per rank");
  app.add_option("--hidden", hidden, "Hidden size");
  app.add_option("--experts", experts, "Experts per layer");
  app.add_option("--top-k", top_k, "Experts per token");
  app.add_option("--iters", iters, "Timed iterations (median reported)");
  app.add_option("--json", json_path, "Write results as JSON (rank 0)");
  CLI11_PARSE(app, argc, argv);

  try {
    auto comm = moe::parallel::make_mpi_communicator({});
    const int rank = comm->rank(), n = comm->size();
    auto backend = moe::kernels::make_backend("cpu", 0);
    std::vector<bool> moe_layers{true};
    auto placement = moe::parallel::Placement::build({}, moe_layers, experts, n);
    const auto& lp = placement.layer(0);

    std::mt19937 rng(1234 + rank);
    std::vector<float> hidden_rows(static_cast<size_t>(tokens * hidden));
    for (auto& v : hidden_rows) v = std::uniform_real_distribution<float>(-1, 1)(rng);
    std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
    std::vector<float> weights(ids.size(), 1.0f / top_k);
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<int> all(experts);
      for (int e = 0; e < experts; ++e) all[e] = e;
      std::shuffle(all.begin(), all.end(), rng);
      for (int j = 0; j < top_k; ++j) ids[t * top_k + j] = all[j];
    }
    moe::parallel::Dispatcher dispatcher(*comm, *backend, hidden, top_k);
    moe::kernels::HostPhaseTimer timer(3);  // layout, dispatch, combine
    dispatcher.set_timer(&timer, 0, 1, 2);
    std::vector<float> y(static_cast<size_t>(tokens * hidden));
    std::vector<float> expert_out;

    // Dispatcher: layout + counts + dispatch + combine. Its counts are fixed (the routing is),
    // so the first call also tells the raw baseline what to move.
    std::vector<double> ours, raw, layout_s, dispatch_s, combine_s;
    auto run_ours = [&] {
      comm->barrier();
      auto t0 = Clock::now();
      timer.start();
      auto r = dispatcher.dispatch(hidden_rows.data(), tokens, ids, weights, lp);
      const double dispatch_s = std::chrono::duration<double>(Clock::now() - t0).count();
      // Stand-in for expert compute, untimed: every output row is written, as the GEMMs would,
      // so combine reads rows just produced rather than rows last touched an iteration ago.
      expert_out.resize(std::max<size_t>(1, r.batch.row_index.size() * hidden));
      std::fill(expert_out.begin(), expert_out.end(), 0.5f);
      auto t1 = Clock::now();
      timer.start();
      dispatcher.combine(expert_out.data(), r, y.data());
      return std::pair{dispatch_s + std::chrono::duration<double>(Clock::now() - t1).count(),
                       std::move(r)};
    };
    const moe::parallel::DispatchResult last = run_ours().second;

    // Raw MPI_Alltoallv with the same per-peer byte counts: rows + routes out, rows back.
    const auto& send_counts = last.layout.send_counts;
    const auto& recv_counts = last.recv_counts;
    const int64_t row_bytes =
        hidden * 4 + top_k * static_cast<int64_t>(sizeof(moe::parallel::RouteEntry));
    std::vector<int> sc(n), rc(n), sd(n), rd(n), sc2(n), rc2(n), sd2(n), rd2(n);
    int64_t s_total = 0, r_total = 0;
    for (int p = 0; p < n; ++p) {
      sc[p] = static_cast<int>(send_counts[p] * row_bytes);
      rc[p] = static_cast<int>(recv_counts[p] * row_bytes);
      sc2[p] = static_cast<int>(recv_counts[p] * hidden * 4);  // combine: reverse, rows only
      rc2[p] = static_cast<int>(send_counts[p] * hidden * 4);
      sd[p] = p ? sd[p - 1] + sc[p - 1] : 0;
      rd[p] = p ? rd[p - 1] + rc[p - 1] : 0;
      sd2[p] = p ? sd2[p - 1] + sc2[p - 1] : 0;
      rd2[p] = p ? rd2[p - 1] + rc2[p - 1] : 0;
      s_total += sc[p];
      r_total += rc[p];
    }
    std::vector<char> sbuf(std::max<int64_t>(s_total, 1)), rbuf(std::max<int64_t>(r_total, 1));
    auto run_raw = [&] {
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = Clock::now();
      MPI_Alltoallv(sbuf.data(), sc.data(), sd.data(), MPI_BYTE, rbuf.data(), rc.data(), rd.data(),
                    MPI_BYTE, MPI_COMM_WORLD);
      MPI_Alltoallv(rbuf.data(), sc2.data(), sd2.data(), MPI_BYTE, sbuf.data(), rc2.data(),
                    rd2.data(), MPI_BYTE, MPI_COMM_WORLD);
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };

    // Interleaved, so both see the same machine: on this shared VM the raw exchange alone
    // drifts between ~250 us and ~1300 us from one run to the next.
    for (int i = 0; i < iters + 2; ++i) {
      const double ours_s = run_ours().first;
      const double raw_s = run_raw();
      std::array<double, 3> phase_s{};
      timer.collect(phase_s);
      if (i < 2) continue;  // warm-up
      ours.push_back(ours_s);
      raw.push_back(raw_s);
      layout_s.push_back(phase_s[0]);
      dispatch_s.push_back(phase_s[1]);
      combine_s.push_back(phase_s[2]);
    }

    // Slowest rank's median decides (an all-to-all finishes when its last rank does).
    double v[5] = {median(ours), median(raw), median(layout_s), median(dispatch_s),
                   median(combine_s)};
    comm->all_reduce<double>(std::span<double>(v, 5), moe::parallel::ReduceOp::kMax);
    std::vector<int64_t> bytes{s_total};
    comm->all_reduce<int64_t>(bytes, moe::parallel::ReduceOp::kSum);
    if (rank == 0) {
      const double ratio = v[0] / v[1];
      fmt::print("{:>5} {:>7} {:>6} {:>4} {:>12} {:>14} {:>14} {:>8}\n", "ranks", "tokens",
                 "hidden", "k", "bytes/iter", "dispatch+comb", "raw alltoallv", "ratio");
      fmt::print("{:>5} {:>7} {:>6} {:>4} {:>12} {:>12.1f}us {:>12.1f}us {:>8.3f}\n", n, tokens,
                 hidden, top_k, bytes[0], v[0] * 1e6, v[1] * 1e6, ratio);
      fmt::print(
          "      of which (max over ranks of medians): layout {:.1f}us, dispatch {:.1f}us, "
          "combine {:.1f}us\n",
          v[2] * 1e6, v[3] * 1e6, v[4] * 1e6);
      if (!json_path.empty()) {
        nlohmann::json j = {{"ranks", n},
                            {"tokens_per_rank", tokens},
                            {"hidden", hidden},
                            {"experts", experts},
                            {"top_k", top_k},
                            {"iters", iters},
                            {"dispatch_bytes_all_ranks", bytes[0]},
                            {"dispatch_combine_us", v[0] * 1e6},
                            {"raw_alltoallv_us", v[1] * 1e6},
                            {"layout_us", v[2] * 1e6},
                            {"dispatch_us", v[3] * 1e6},
                            {"combine_us", v[4] * 1e6},
                            {"ratio", ratio}};
        std::ofstream(json_path) << j.dump(2) << "\n";
      }
    }
    comm->shutdown();
  } catch (const moe::Error& e) {
    moe::parallel::MpiSession::abort_job(fmt::format("bench_dispatch: error: {}", e.what()), 1);
  }
  return 0;
}
