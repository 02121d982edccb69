// All-to-all benchmark of the expert-parallel exchange, in the style of nccl-tests: the
// Dispatcher's dispatch + combine alone, for a sweep of tokens x hidden x top-k x wire type on the
// mpirun size N, next to a raw exchange moving the same bytes per peer in the same type
// (MPI_Alltoallv on the host, or the communicator's grouped ncclSend/ncclRecv with --backend cuda
// --comm nccl). Run under mpirun:
//   mpirun -np N bench_dispatch [--tokens 128,512] [--hidden 1024,2048] [--top-k 2,8]
//                               [--dtype fp32,bf16,fp8] [--experts 128] [--capacity C]
//                               [--iters 20] [--stat median|min] [--json F] [--csv F]
// --dtype picks the rows' wire type: fp32 (fp32 compute), bf16 (bf16 compute: rows both ways in
// bf16), fp8 (bf16 compute: e4m3 rows out, bf16 back). Data and routing are seeded
// (bench/a2a_check.h); expert compute is an untimed stand-in (out = scale(expert) * in, in the
// dtype the runtime's experts write: fp32 for fp32 rows, bf16 for bf16 and fp8 rows, which need
// bf16 compute), and every rank counts the output elements that differ from the reference
// exchange (#wrong; exact: the reference forms the same fp32 operations, rounding where the wire
// type and the bf16 experts round). The memory floor is measured in the same run: one streaming
// read of every expert output in that dtype (what any combine must do at least once; bf16
// outputs are half the bytes; read as integer words, so the memory sets the time), timed right
// after the stand-in wrote them, as the combine sees them; and one
// read-modify-write of the hidden rows, the residual add the combine fuses (x + combined rows).
// Columns (per rank, median or min over iterations, then the slowest rank): size = bytes one rank
// moves (rows and route entries out, rows back, own rows included, as nccl-tests counts its own
// chunk), algbw = size / time, busbw = algbw x (N-1)/N (nccl-tests' all-to-all factor), coll =
// exchanges per MoE layer. The dispatch, the combine and each raw exchange start after a barrier,
// and the dispatch and the combine end in one (untimed): where ranks share cores, no rank's time
// includes a peer's untimed work. Exit code 1 when any element is wrong. Note: bench/ uses MPI
// directly only for the raw baseline; the runtime never does.
#include <fmt/format.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "a2a_check.h"
#include "bench/bench_util.h"
#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "parallel/communicator.h"
#include "parallel/dispatcher.h"
#include "parallel/placement.h"

namespace moe::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kSeed = 20261129;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
// One streaming read of `bytes` bytes, summed as 8-byte integer words (integer adds vectorise, so
// this is the memory's floor whatever the values' dtype, not the adds').
uint64_t sum_words(const unsigned char* src, size_t bytes) {
  const auto* w = reinterpret_cast<const uint64_t*>(src);
  const size_t n = bytes / 8;
  uint64_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    acc0 += w[i];
    acc1 += w[i + 1];
    acc2 += w[i + 2];
    acc3 += w[i + 3];
  }
  for (; i < n; ++i) acc0 += w[i];
  for (size_t b = n * 8; b < bytes; ++b) acc1 += src[b];
  return acc0 + acc1 + acc2 + acc3;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
double minimum(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
}

struct Options {
  std::vector<int64_t> tokens = {128, 512};
  std::vector<int64_t> hidden = {1024, 2048};
  std::vector<int> top_k = {2, 8};
  std::vector<std::string> dtypes = {"fp32"};
  int experts = 128;
  int capacity = 0;  // rows per peer of the fixed-capacity message; 0: the dispatcher's default
  int iters = 20;
  int warmup = 3;
  std::string stat = "median";  // median | min (per rank, over iterations)
  std::string backend = "cpu", comm = "mpi", json, csv;
};

struct Case {
  int64_t tokens = 0, hidden = 0;
  int top_k = 0;
  kernels::WireDtype dtype = kernels::WireDtype::kF32;
};

// One case's figures (slowest rank's medians; bytes are per rank, mean over ranks).
struct CaseResult {
  Case c;
  double size_bytes = 0;  // dispatch + combine, own rows included
  double ours_s = 0, raw_s = 0, mem_s = 0;
  double residual_s = 0;  // one read-modify-write of the hidden states, the fused residual's
  double floor_s() const { return mem_s + residual_s; }
  double dispatch_s = 0, combine_s = 0;
  int64_t wrong = 0, raw_wrong = 0;  // summed over ranks
  int64_t collectives = 0;           // exchanges per MoE layer
};

class A2aBench {
 public:
  A2aBench(const Options& o, parallel::Communicator& comm, kernels::Backend& backend)
      : o_(o), comm_(comm), backend_(backend), rank_(comm.rank()), n_(comm.size()) {}

  CaseResult run(const Case& c) {
    const auto placement = parallel::Placement::build({}, {true}, o_.experts, n_);
    const parallel::LayerPlacement& lp = placement.layer(0);
    std::vector<int> rank_of_expert;
    for (const auto& replicas : lp.expert_slots) rank_of_expert.push_back(replicas.front().rank);
    const A2aRouting routing = a2a_routing(kSeed, rank_, c.tokens, o_.experts, c.top_k);
    const int64_t H = c.hidden;

    std::vector<float> host_hidden(static_cast<size_t>(c.tokens * H));
    for (int64_t t = 0; t < c.tokens; ++t) {
      for (int64_t col = 0; col < H; ++col) {
        host_hidden[static_cast<size_t>(t * H + col)] = a2a_hidden_value(kSeed, rank_, t, col);
      }
    }
    kernels::Buffer<float> hidden(backend_, std::max<size_t>(host_hidden.size(), 1));
    backend_.upload(hidden.data(), host_hidden.data(), host_hidden.size() * sizeof(float));
    kernels::Buffer<float> y(backend_, std::max<size_t>(host_hidden.size(), 1));
    kernels::Buffer<unsigned char> expert_out;  // [P, H] fp32, or bf16 where the experts are bf16
    std::vector<float> host_recv, host_out, host_y(host_hidden.size());
    std::vector<bf16> host_recv_bf16, host_out_bf16;
    kernels::Buffer<int32_t> ids;
    kernels::Buffer<float> weights;
    ids.assign(backend_, routing.ids.data(), routing.ids.size());
    weights.assign(backend_, routing.weights.data(), routing.weights.size());
    std::vector<int32_t> slot_begin, row_index;

    parallel::DispatcherOptions dopts;
    dopts.wire = c.dtype;
    dopts.capacity_rows = o_.capacity;
    parallel::Dispatcher dispatcher(comm_, backend_, H, c.top_k, dopts);
    dispatcher.set_placement(placement);
    const parallel::WirePlan wire = dispatcher.wire();
    // bf16 and fp8 rows need bf16 compute, whose experts write bf16 rows (MoeLayer).
    const bool bf16_out = wire.dispatch != kernels::WireDtype::kF32;
    const size_t out_elem_bytes = bf16_out ? sizeof(bf16) : sizeof(float);
    // bf16 compute also keeps the experts' input rounded to bf16 (the runtime's h_bf16, made by
    // the norm before the router), which the dispatch copies into bf16 rows.
    kernels::Buffer<bf16> hidden_bf16;
    if (bf16_out) {
      std::vector<bf16> rounded(host_hidden.size());
      for (size_t i = 0; i < rounded.size(); ++i) rounded[i] = float_to_bf16(host_hidden[i]);
      hidden_bf16.assign(backend_, rounded.data(), rounded.size());
    }
    const auto count_wrong = [&] {
      backend_.download(host_y.data(), y.data(), host_y.size() * sizeof(float));
      return a2a_count_wrong_on_wire(host_y.data(), kSeed, rank_, routing, c.tokens, H,
                                     wire.dispatch, wire.combine, rank_of_expert);
    };
    kernels::HostPhaseTimer timer(3);  // layout, dispatch, combine
    dispatcher.set_timer(&timer, 0, 1, 2);

    // Untimed stand-in for the expert GEMMs: out[p] = scale(expert of p's slot) * in[row(p)],
    // stored as the runtime's experts store it (a2a_expert_out).
    auto expert_compute = [&](const parallel::DispatchHandle& r) {
      const kernels::ExpertBatch& b = r.experts;
      slot_begin.resize(static_cast<size_t>(b.num_slots + 1));
      backend_.download(slot_begin.data(), b.slot_begin, slot_begin.size() * sizeof(int32_t));
      const int64_t P = slot_begin.back();
      row_index.resize(static_cast<size_t>(P));
      backend_.download(row_index.data(), b.row_index, row_index.size() * sizeof(int32_t));
      // The rows the pairs name, one download each: rows read in place lie apart in the arena
      // (segments apart over a shared arena), and copying the whole span would stream megabytes
      // through the caches between the timed phases.
      host_recv.resize(static_cast<size_t>(std::max<int64_t>(P, 1) * H));
      host_out.resize(host_recv.size());
      host_recv_bf16.resize(static_cast<size_t>(H));
      for (int64_t p = 0; p < P; ++p) {
        const int64_t at = static_cast<int64_t>(row_index[static_cast<size_t>(p)]) * H;
        float* in = host_recv.data() + p * H;
        if (r.recv_rows_bf16 != nullptr) {  // bf16 rows read where they landed
          backend_.download(host_recv_bf16.data(), r.recv_rows_bf16 + at,
                            static_cast<size_t>(H) * sizeof(bf16));
          for (int64_t col = 0; col < H; ++col) in[col] = bf16_to_float(host_recv_bf16[col]);
        } else {
          backend_.download(in, r.recv_rows + at, static_cast<size_t>(H) * sizeof(float));
        }
      }
      const auto& slots = lp.rank_experts[static_cast<size_t>(rank_)];
      for (size_t slot = 0; slot + 1 < slot_begin.size(); ++slot) {
        for (int64_t p = slot_begin[slot]; p < slot_begin[slot + 1]; ++p) {
          const float* in = host_recv.data() + p * H;
          float* out = host_out.data() + p * H;
          for (int64_t col = 0; col < H; ++col) {
            out[col] = a2a_expert_out(slots[slot], in[col], wire.dispatch);
          }
        }
      }
      expert_out.ensure(backend_, host_out.size() * out_elem_bytes);
      if (bf16_out) {
        host_out_bf16.resize(host_out.size());
        for (size_t i = 0; i < host_out.size(); ++i) host_out_bf16[i] = float_to_bf16(host_out[i]);
        backend_.upload(expert_out.data(), host_out_bf16.data(), host_out.size() * sizeof(bf16));
      } else {
        backend_.upload(expert_out.data(), host_out.data(), host_out.size() * sizeof(float));
      }
      return P;
    };

    // Our exchange, timed in two parts around the untimed stand-in. The combine adds into y,
    // which starts at zero (in the model it is the residual stream).
    auto run_ours = [&](double& dispatch_s, double& combine_s, int64_t& pairs) {
      dispatcher.begin_step();
      comm_.barrier();
      auto t0 = Clock::now();
      timer.start();
      parallel::DispatchHandle r =
          dispatcher.dispatch(0, hidden.data(), c.tokens, ids.data(), weights.data(),
                              bf16_out ? hidden_bf16.data() : nullptr);
      backend_.synchronize();
      dispatch_s = seconds_since(t0);
      // Nobody starts the stand-in before every rank's dispatch returned: where ranks share cores
      // (4 on 2 here), a peer's dispatch must not wait for this rank's untimed stand-in to give up
      // the core (a woken rank waits for the running one's time slice: 2 ms, measured).
      comm_.barrier();
      pairs = expert_compute(r);
      backend_.fill_zero(y.data(), y.size_bytes());
      backend_.synchronize();
      // Every rank enters the combine together, as both raw exchanges start after a barrier: the
      // combine's time must not include a peer still running its (untimed) stand-in.
      comm_.barrier();
      t0 = Clock::now();
      timer.start();
      if (bf16_out) {
        dispatcher.combine(reinterpret_cast<const bf16*>(expert_out.data()), r, y.data());
      } else {
        dispatcher.combine(reinterpret_cast<const float*>(expert_out.data()), r, y.data());
      }
      backend_.synchronize();
      combine_s = seconds_since(t0);
      comm_.barrier();  // likewise, no rank's floors delay a peer's combine
      return r;
    };

    // Device memory: seconds of one device-to-device copy of `bytes` from src (a read and a write),
    // into a scratch buffer the two floors share.
    kernels::Buffer<unsigned char> copy_scratch;
    auto device_copy_seconds = [&](const void* src, size_t bytes) {
      copy_scratch.ensure(backend_, std::max<size_t>(bytes, 1));
      backend_.synchronize();
      const auto t0 = Clock::now();
      backend_.copy(copy_scratch.data(), src, bytes);
      backend_.synchronize();
      return seconds_since(t0);
    };

    // The memory floor: one read of every expert output, in the dtype the experts wrote, right
    // after they were written, where the combine reads them. Device memory: half a copy.
    auto run_mem = [&](int64_t pairs) {
      const size_t bytes = static_cast<size_t>(pairs * H) * out_elem_bytes;
      if (!backend_.is_host_memory()) return device_copy_seconds(expert_out.data(), bytes) / 2;
      const auto t0 = Clock::now();
      const uint64_t sum = sum_words(expert_out.data(), bytes);
      const double s = seconds_since(t0);
      volatile uint64_t sink = sum;  // keeps the loop
      (void)sink;
      return s;
    };

    // The residual's floor: the combine returns x + the combined rows (the layer's residual add,
    // fused), so it also reads and writes every hidden row once, which the raw exchange does not
    // do and an unfused layer does in its own pass. Adding -0.0 is exact for every value, so y
    // keeps its bits. Device memory: a copy (one read, one write).
    auto run_residual = [&] {
      const int64_t n = c.tokens * H;
      if (!backend_.is_host_memory()) {
        return device_copy_seconds(y.data(), static_cast<size_t>(n) * sizeof(float));
      }
      volatile float minus_zero = -0.0f;
      const float add = minus_zero;
      float* x = y.data();
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < n; ++i) x[i] = x[i] + add;
      return seconds_since(t0);
    };

    // First call: fixes the per-peer counts the raw exchange mirrors, and checks the result.
    double d0 = 0, c0 = 0;
    int64_t pairs = 0;
    const parallel::DispatchHandle first = run_ours(d0, c0, pairs);
    CaseResult res;
    res.c = c;
    res.wrong = count_wrong();
    res.collectives = dispatcher.collect_loads()[0].traffic.collectives;

    RawExchange raw = make_raw(first, c, wire);
    res.raw_wrong = raw.run_and_check(*this);

    std::vector<double> ours, raws, mems, residuals, disp, comb;
    for (int i = 0; i < o_.warmup + o_.iters; ++i) {
      double d = 0, cb = 0;
      run_ours(d, cb, pairs);
      const double mem = run_mem(pairs);  // stand-in output still as the combine saw it
      const double residual = run_residual();
      comm_.barrier();
      const double raw_s = raw.run(*this);
      std::array<double, 3> phases{};
      timer.collect(phases);
      if (i < o_.warmup) continue;
      ours.push_back(d + cb);
      raws.push_back(raw_s);
      mems.push_back(mem);
      residuals.push_back(residual);
      disp.push_back(d);
      comb.push_back(cb);
    }
    // A last check after the timed loop: buffers reused across iterations stay right.
    res.wrong += count_wrong();

    const auto stat = [&](const std::vector<double>& x) {
      return o_.stat == "min" ? minimum(x) : median(x);
    };
    std::array<double, 6> v = {stat(ours), stat(raws), stat(mems),
                               stat(disp), stat(comb), stat(residuals)};
    comm_.all_reduce(std::span<double>(v), parallel::ReduceOp::kMax);
    std::array<double, 1> size = {raw.size_bytes};
    comm_.all_reduce(std::span<double>(size), parallel::ReduceOp::kSum);
    std::array<int64_t, 2> wrong = {res.wrong, res.raw_wrong};
    comm_.all_reduce(std::span<int64_t>(wrong), parallel::ReduceOp::kSum);
    res.ours_s = v[0];
    res.raw_s = v[1];
    res.mem_s = v[2];
    res.dispatch_s = v[3];
    res.combine_s = v[4];
    res.residual_s = v[5];
    res.size_bytes = size[0] / n_;
    res.wrong = wrong[0];
    res.raw_wrong = wrong[1];
    return res;
  }

 private:
  // The raw baseline: the same bytes per peer as our exchange (rows and route entries out, rows
  // back, own block included, in the same wire types), as two plain all-to-alls of bytes.
  struct RawExchange {
    std::vector<int64_t> out_bytes, back_bytes;  // [N] per peer
    std::vector<int64_t> out_recv, back_recv;    // [N] per peer
    std::vector<unsigned char> send, recv;
    kernels::Buffer<unsigned char> dev_send, dev_recv;  // device communicators
    double size_bytes = 0;

    static std::vector<int> displs(const std::vector<int>& counts) {
      std::vector<int> d(counts.size(), 0);
      for (size_t p = 1; p < counts.size(); ++p) d[p] = d[p - 1] + counts[p - 1];
      return d;
    }
    static std::vector<int> as_int(const std::vector<int64_t>& v) {
      std::vector<int> r(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        MOE_CHECK(v[i] <= INT32_MAX, "raw exchange block of {} bytes exceeds MPI's int", v[i]);
        r[i] = static_cast<int>(v[i]);
      }
      return r;
    }
    double exchange(A2aBench& b, const std::vector<int64_t>& sc, const std::vector<int64_t>& rc) {
      if (b.comm_.device_buffers()) {
        const auto t0 = Clock::now();
        b.comm_.all_to_all_v<unsigned char>(
            std::span<const unsigned char>(dev_send.data(), dev_send.size()), sc,
            std::span<unsigned char>(dev_recv.data(), dev_recv.size()), rc);
        b.backend_.synchronize();
        return seconds_since(t0);
      }
      const auto s = as_int(sc), r = as_int(rc);
      const auto sd = displs(s), rd = displs(r);
      const auto t0 = Clock::now();
      MPI_Alltoallv(send.data(), s.data(), sd.data(), MPI_BYTE, recv.data(), r.data(), rd.data(),
                    MPI_BYTE, MPI_COMM_WORLD);
      return seconds_since(t0);
    }
    // Both directions start from a barrier (untimed), as the dispatch and the combine do: a
    // rank's time never includes a peer still finishing the previous step.
    double run(A2aBench& b) {
      const double out_s = exchange(b, out_bytes, out_recv);
      b.comm_.barrier();
      return out_s + exchange(b, back_bytes, back_recv);
    }
    // One exchange of seeded bytes, each received byte checked against its sender's pattern.
    int64_t run_and_check(A2aBench& b) {
      const int n = b.n_, me = b.rank_;
      int64_t at = 0;
      for (int p = 0; p < n; ++p) {
        for (int64_t i = 0; i < out_bytes[static_cast<size_t>(p)]; ++i) {
          send[static_cast<size_t>(at++)] = a2a_raw_byte(kSeed, me, p, i);
        }
      }
      if (b.comm_.device_buffers()) b.backend_.upload(dev_send.data(), send.data(), send.size());
      exchange(b, out_bytes, out_recv);
      if (b.comm_.device_buffers()) b.backend_.download(recv.data(), dev_recv.data(), recv.size());
      int64_t wrong = 0;
      at = 0;
      for (int p = 0; p < n; ++p) {
        for (int64_t i = 0; i < out_recv[static_cast<size_t>(p)]; ++i) {
          wrong += recv[static_cast<size_t>(at++)] != a2a_raw_byte(kSeed, p, me, i) ? 1 : 0;
        }
      }
      return wrong;
    }
  };

  RawExchange make_raw(const parallel::DispatchHandle& r, const Case& c,
                       const parallel::WirePlan& wire) {
    // One rank exchanges nothing: it sends and receives its own tokens.
    const std::vector<int64_t> one_rank{c.tokens};
    const std::vector<int64_t>& send_counts = n_ == 1 ? one_rank : r.send_counts;
    const std::vector<int64_t>& recv_counts = n_ == 1 ? one_rank : r.recv_counts;
    RawExchange x;
    const int64_t row_bytes = kernels::wire::row_bytes(wire.dispatch, c.hidden);
    const int64_t back_bytes = kernels::wire::row_bytes(wire.combine, c.hidden);
    const int64_t route_bytes = c.top_k * static_cast<int64_t>(sizeof(parallel::RouteEntry));
    x.out_bytes.resize(static_cast<size_t>(n_));
    x.out_recv.resize(static_cast<size_t>(n_));
    x.back_bytes.resize(static_cast<size_t>(n_));
    x.back_recv.resize(static_cast<size_t>(n_));
    int64_t send_total = 0, recv_total = 0;
    for (size_t p = 0; p < static_cast<size_t>(n_); ++p) {
      x.out_bytes[p] = send_counts[p] * (row_bytes + route_bytes);
      x.out_recv[p] = recv_counts[p] * (row_bytes + route_bytes);
      x.back_bytes[p] = recv_counts[p] * back_bytes;  // combine: the reverse, rows only
      x.back_recv[p] = send_counts[p] * back_bytes;
      send_total += x.out_bytes[p] + x.back_bytes[p];
      recv_total += x.out_recv[p] + x.back_recv[p];
    }
    x.size_bytes = static_cast<double>(send_total);
    const size_t cap = static_cast<size_t>(std::max<int64_t>({send_total, recv_total, 1}));
    x.send.resize(cap);
    x.recv.resize(cap);
    if (comm_.device_buffers()) {
      x.dev_send = kernels::Buffer<unsigned char>(backend_, cap);
      x.dev_recv = kernels::Buffer<unsigned char>(backend_, cap);
    }
    return x;
  }

  const Options& o_;
  parallel::Communicator& comm_;
  kernels::Backend& backend_;
  int rank_, n_;
};

void print_header(const Options& o, int n, const std::string& backend, const std::string& comm) {
  fmt::print("# moe-ep all-to-all: dispatch+combine vs raw exchange of the same bytes\n");
  fmt::print(
      "# N = {} ranks, {} experts, backend {}, comm {}, iters {} (+{} warm-up), {} per rank, "
      "slowest rank\n",
      n, o.experts, backend, comm, o.iters, o.warmup, o.stat);
  fmt::print(
      "# size = bytes per rank (out + back, own rows included); algbw = size / time; busbw "
      "= algbw * (N-1)/N\n");
  fmt::print(
      "# mem = one read of every expert output in the experts' dtype (fp32; bf16 for bf16 and "
      "fp8 rows: the combine's minimum), res = one "
      "read-modify-write "
      "of the hidden rows (the residual add the combine fuses), both measured here\n");
  fmt::print(
      "#{:>6} {:>6} {:>3} {:>11} {:>10} {:>5} {:>4} | {:>9} {:>8} {:>8} {:>6} | {:>9} {:>6} | "
      "{:>6} | {:>8} {:>8} | {:>8} {:>8} | {:>8} {:>8}\n",
      "tokens", "hidden", "k", "size(B)", "count", "type", "coll", "time(us)", "algbw", "busbw",
      "#wrong", "raw(us)", "#wrong", "ratio", "mem(us)", "x(r+m)", "res(us)", "x(r+m+x)",
      "disp(us)", "comb(us)");
}

// nccl-tests' count column: elements of the dispatched type in `size` (bytes / element size).
double element_count(const CaseResult& r) {
  return r.size_bytes / (r.c.dtype == kernels::WireDtype::kF32    ? 4.0
                         : r.c.dtype == kernels::WireDtype::kBF16 ? 2.0
                                                                  : 1.0);
}

void print_row(const CaseResult& r, int n) {
  const double algbw = r.size_bytes / r.ours_s / 1e9;
  const double busbw = algbw * (n - 1) / n;
  fmt::print(
      " {:>6} {:>6} {:>3} {:>11.0f} {:>10.0f} {:>5} {:>4} | {:>9.1f} {:>8.3f} {:>8.3f} {:>6} | "
      "{:>9.1f} {:>6} | {:>6.3f} | {:>8.1f} {:>8.3f} | {:>8.1f} {:>8.3f} | {:>8.1f} {:>8.1f}\n",
      r.c.tokens, r.c.hidden, r.c.top_k, r.size_bytes, element_count(r),
      kernels::wire_dtype_name(r.c.dtype), r.collectives, r.ours_s * 1e6, algbw, busbw, r.wrong,
      r.raw_s * 1e6, r.raw_wrong, r.ours_s / r.raw_s, r.mem_s * 1e6, r.ours_s / (r.raw_s + r.mem_s),
      r.residual_s * 1e6, r.ours_s / (r.raw_s + r.floor_s()), r.dispatch_s * 1e6,
      r.combine_s * 1e6);
}

int run(int argc, char** argv) {
  Options o;
  CLI::App app{"dispatch+combine vs a raw all-to-all of the same bytes (nccl-tests style)"};
  app.add_option("--tokens", o.tokens, "Tokens per rank (list)")->delimiter(',');
  app.add_option("--hidden", o.hidden, "Hidden sizes (list)")->delimiter(',');
  app.add_option("--top-k", o.top_k, "Experts per token (list)")->delimiter(',');
  app.add_option("--dtype", o.dtypes,
                 "Wire types of the rows (list): fp32 (fp32 compute), bf16, fp8 (bf16 compute; "
                 "fp8 rows out, bf16 back)")
      ->delimiter(',')
      ->check(CLI::IsMember({"fp32", "bf16", "fp8"}));
  app.add_option("--experts", o.experts, "Experts per layer");
  app.add_option("--capacity", o.capacity,
                 "Rows per peer of the fixed-capacity message (0: the dispatcher's default)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--iters", o.iters, "Timed iterations per case (median reported)");
  app.add_option("--warmup", o.warmup, "Untimed iterations per case");
  app.add_option("--stat", o.stat,
                 "Per-rank statistic over iterations: median, or min (on a machine shared with "
                 "other jobs, the undisturbed cost)")
      ->check(CLI::IsMember({"median", "min"}));
  app.add_option("--backend", o.backend, "cpu | cuda");
  app.add_option("--comm", o.comm, "mpi | nccl (nccl needs --backend cuda)");
  app.add_option("--json", o.json, "Write results as JSON (rank 0)");
  app.add_option("--csv", o.csv, "Write results as CSV (rank 0)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  MOE_CHECK_AS("config", o.iters >= 1 && o.warmup >= 0 && o.experts >= 1,
               "--iters must be >= 1, --warmup >= 0 and --experts >= 1");
  for (int k : o.top_k) {
    MOE_CHECK_AS("config", k >= 1 && k <= o.experts, "--top-k {} must be in [1, --experts {}]", k,
                 o.experts);
  }

  auto comm = parallel::make_communicator(parallel::parse_comm_kind(o.comm), {});
  const int n = comm->size();
  if (comm->rank() == 0) print_header(o, n, o.backend, o.comm);
  std::vector<CaseResult> results;
  for (const std::string& dtype : o.dtypes) {
    // fp32 rows with fp32 compute; bf16 and fp8 rows with bf16 compute.
    kernels::BackendOptions bopts;
    bopts.kind = kernels::parse_backend_kind(o.backend);
    bopts.local_rank = comm->local_rank();
    bopts.compute_dtype =
        dtype == "fp32" ? kernels::ComputeDtype::kF32 : kernels::ComputeDtype::kBF16;
    if (bopts.kind == kernels::BackendKind::kCuda) bopts.compute_dtype.reset();  // bf16 only
    auto backend = kernels::make_backend(bopts);
    comm->bind_compute_stream(backend->compute_stream());
    const kernels::WireDtype wire = dtype == "fp32"   ? kernels::WireDtype::kF32
                                    : dtype == "bf16" ? kernels::WireDtype::kBF16
                                                      : kernels::WireDtype::kFP8;
    A2aBench bench(o, *comm, *backend);
    for (int64_t t : o.tokens) {
      for (int64_t h : o.hidden) {
        for (int k : o.top_k) {
          results.push_back(bench.run({t, h, k, wire}));
          if (comm->rank() == 0) print_row(results.back(), n);
        }
      }
    }
  }
  int64_t wrong = 0;
  double ratio_min = 1e30, ratio_max = 0, floor_min = 1e30, floor_max = 0, busbw_sum = 0;
  double full_min = 1e30, full_max = 0;
  for (const CaseResult& r : results) {
    wrong += r.wrong + r.raw_wrong;
    ratio_min = std::min(ratio_min, r.ours_s / r.raw_s);
    ratio_max = std::max(ratio_max, r.ours_s / r.raw_s);
    floor_min = std::min(floor_min, r.ours_s / (r.raw_s + r.mem_s));
    floor_max = std::max(floor_max, r.ours_s / (r.raw_s + r.mem_s));
    full_min = std::min(full_min, r.ours_s / (r.raw_s + r.floor_s()));
    full_max = std::max(full_max, r.ours_s / (r.raw_s + r.floor_s()));
    busbw_sum += r.size_bytes / r.ours_s / 1e9 * (n - 1) / n;
  }
  if (comm->rank() == 0) {
    fmt::print("# #wrong (all cases, all ranks): {} {}\n", wrong, wrong == 0 ? "OK" : "FAILED");
    fmt::print("# avg busbw: {:.3f} GB/s\n", busbw_sum / static_cast<double>(results.size()));
    fmt::print(
        "# ratio dispatch+combine / raw: {:.3f} .. {:.3f} (goal <= 1.15); / (raw + mem): "
        "{:.3f} .. {:.3f}; / (raw + mem + res): {:.3f} .. {:.3f}\n",
        ratio_min, ratio_max, floor_min, floor_max, full_min, full_max);
    nlohmann::json j;
    j["ranks"] = n;
    j["experts"] = o.experts;
    j["backend"] = o.backend;
    j["comm"] = o.comm;
    j["iters"] = o.iters;
    j["stat"] = o.stat;
    j["wrong"] = wrong;
    j["cases"] = nlohmann::json::array();
    for (const CaseResult& r : results) {
      j["cases"].push_back(
          {{"tokens_per_rank", r.c.tokens},
           {"hidden", r.c.hidden},
           {"top_k", r.c.top_k},
           {"dtype", kernels::wire_dtype_name(r.c.dtype)},
           {"collectives_per_layer", r.collectives},
           {"size_bytes", r.size_bytes},
           {"count", element_count(r)},
           {"time_us", r.ours_s * 1e6},
           {"algbw_gb_s", r.size_bytes / r.ours_s / 1e9},
           {"busbw_gb_s", r.size_bytes / r.ours_s / 1e9 * (n - 1) / n},
           {"wrong", r.wrong},
           {"raw_us", r.raw_s * 1e6},
           {"raw_wrong", r.raw_wrong},
           {"ratio", r.ours_s / r.raw_s},
           {"mem_us", r.mem_s * 1e6},
           {"ratio_to_raw_plus_mem", r.ours_s / (r.raw_s + r.mem_s)},
           {"residual_us", r.residual_s * 1e6},
           {"ratio_to_raw_plus_mem_plus_residual", r.ours_s / (r.raw_s + r.floor_s())},
           {"dispatch_us", r.dispatch_s * 1e6},
           {"combine_us", r.combine_s * 1e6}});
    }
    if (!o.json.empty()) std::ofstream(o.json) << j.dump(2) << "\n";
    if (!o.csv.empty()) {
      std::ofstream f(o.csv);
      f << "ranks,tokens,hidden,top_k,dtype,collectives_per_layer,size_bytes,count,time_us,"
           "algbw_gb_s,busbw_gb_s,wrong,raw_us,raw_wrong,ratio,mem_us,ratio_to_raw_plus_mem,"
           "residual_us,ratio_to_raw_plus_mem_plus_residual,dispatch_us,combine_us\n";
      for (const auto& c : j["cases"]) {
        f << n << "," << c["tokens_per_rank"] << "," << c["hidden"] << "," << c["top_k"] << ","
          << c["dtype"].get<std::string>() << "," << c["collectives_per_layer"] << ","
          << c["size_bytes"] << "," << c["count"] << "," << c["time_us"] << "," << c["algbw_gb_s"]
          << "," << c["busbw_gb_s"] << "," << c["wrong"] << "," << c["raw_us"] << ","
          << c["raw_wrong"] << "," << c["ratio"] << "," << c["mem_us"] << ","
          << c["ratio_to_raw_plus_mem"] << "," << c["residual_us"] << ","
          << c["ratio_to_raw_plus_mem_plus_residual"] << "," << c["dispatch_us"] << ","
          << c["combine_us"] << "\n";
      }
    }
  }
  comm->shutdown();
  return wrong == 0 ? 0 : 1;
}

}  // namespace
}  // namespace moe::bench

int main(int argc, char** argv) {
  return moe::bench::mpi_main(argc, argv, "bench_dispatch", moe::bench::run);
}
