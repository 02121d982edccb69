// Cost-model projections (issue 11): published anchors the model was not fitted on, Qwen3-30B-A3B
// prefill / decode on 8-256 GPUs per placement strategy and routing, and the workstation
// question (2-4 PCIe cards next to one H200). Prints fixed tables and writes one JSON; run from
// the repository root:  build/<dir>/bench/bench_cost_projections --json
// bench/results/cost_projections.json
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "parallel/dispatcher.h"
#include "runtime/analysis/cost_model.h"
#include "runtime/analysis/hardware.h"
#include "runtime/analysis/plan.h"
#include "runtime/io/config.h"

using namespace moe;
using namespace moe::runtime;

namespace {

// The CUDA runtime's setting: bf16 KV cache, bf16 rows both ways, fixed capacity of the device
// messages, no overlap; the flat exchange unless `exchange` says otherwise.
void bf16_exchange(CostWorkload& w,
                   parallel::ExchangeKind exchange = parallel::ExchangeKind::kFlat) {
  w.kv_bytes = 2;
  w.dispatch_row_bytes = w.combine_row_bytes = 2;
  w.capacity_rows = parallel::Dispatcher::kDeviceCapacityRows;
  w.exchange = exchange;
}

// One expert-parallel exchange of `tokens` tokens per rank, top-k over `experts` experts spread
// evenly, one row of `row_bytes` per (token, expert) pair (no dedup: DeepEP's low-latency and
// pplx kernels send per expert), on rank 0 of N. The cost model's exchange_seconds.
double exchange_us(const HardwareProfile& h, int N, double tokens, int top_k, double row_bytes) {
  std::vector<double> bytes(static_cast<size_t>(N), tokens * top_k / N * row_bytes);
  bytes[0] = 0;
  return exchange_seconds(h, N, 0, bytes, bytes) * 1e6;
}

nlohmann::json anchors(const HardwareProfile& h100) {
  nlohmann::json out = nlohmann::json::array();
  // DeepEP's figures are on H800: NVLink ~160 GB/s (DeepEP docs/legacy.md, same page), the rest
  // of the H100 profile unchanged.
  HardwareProfile h800 = h100;
  h800.name = "h800 (h100-8gpu with NVLink 160 GB/s)";
  h800.intra_node.bandwidth_gbps = 160;
  const double fp8_row = 7168 + 7168 / 128 * 4;  // FP8 values + one fp32 scale per 128
  const double bf16_row = 7168 * 2;
  fmt::print("\n## Published anchors (not fitted)\n\n");
  fmt::print("| anchor | setting | published | predicted | error |\n|---|---|---|---|---|\n");
  auto row = [&](const std::string& name, const std::string& setting, double pub, double pred,
                 const std::string& unit) {
    const double err = (pred - pub) / pub;
    fmt::print("| {} | {} | {:.1f} {} | {:.1f} {} | {:+.0f}% |\n", name, setting, pub, unit, pred,
               unit, 100 * err);
    out.push_back({{"anchor", name},
                   {"setting", setting},
                   {"published", pub},
                   {"predicted", pred},
                   {"unit", unit},
                   {"error", err}});
  };
  const int eps[] = {8, 16, 32, 64, 128, 256};
  const double ll_dispatch[] = {77, 118, 155, 173, 192, 194};
  const double ll_combine[] = {114, 195, 273, 314, 369, 360};
  for (int i = 0; i < 6; ++i) {
    row("DeepEP LL dispatch", fmt::format("EP{}, 128 tok, H 7168, top-8, FP8", eps[i]),
        ll_dispatch[i], exchange_us(h800, eps[i], 128, 8, fp8_row), "us");
  }
  for (int i = 0; i < 6; ++i) {
    row("DeepEP LL combine", fmt::format("EP{}, 128 tok, H 7168, top-8, BF16", eps[i]),
        ll_combine[i], exchange_us(h800, eps[i], 128, 8, bf16_row), "us");
  }
  row("pplx NVLink dispatch", "EP8 H100, 128 tok (DeepSeek-V3 shape assumed)", 83.6,
      exchange_us(h100, 8, 128, 8, fp8_row), "us");
  row("pplx NVLink combine", "EP8 H100, 128 tok (DeepSeek-V3 shape assumed)", 102.3,
      exchange_us(h100, 8, 128, 8, bf16_row), "us");
  // Normal kernels: 4096 tokens, FP8 dispatch; bandwidth = RDMA bytes of the busiest rank / time.
  const int normal_eps[] = {16, 32, 64};
  const double normal_bw[] = {43, 58, 51};
  for (int i = 0; i < 3; ++i) {
    const int N = normal_eps[i];
    const double t = exchange_us(h800, N, 4096, 8, fp8_row) * 1e-6;
    const double rdma_bytes = 4096.0 * 8 / N * fp8_row * (N - h800.ranks_per_node);
    row("DeepEP normal dispatch BW", fmt::format("EP{}, 4096 tok, RDMA", N), normal_bw[i],
        rdma_bytes / t * 1e-9, "GB/s");
  }
  return out;
}

struct Workload {
  std::string name;
  int64_t seqs_per_rank, prompt_len, decode_steps;
};

std::vector<std::pair<std::string, RoutingSpec>> projection_routings() {
  RoutingSpec u, z;
  u.kind = "uniform";
  z.kind = "zipf";
  z.s = 1.2;
  return {{"uniform", u}, {"zipf1.2", z}};
}

// Prefill: 4 x 2048 tokens per GPU. Decode: 128 sequences per GPU at context 2048 (DeepEP's
// decode setting), and 1 sequence per GPU (latency-bound).
std::vector<Workload> projection_loads() {
  return {{"prefill 4x2048/GPU", 4, 2048, 2},
          {"decode 128/GPU ctx 2048", 128, 2048, 3},
          {"decode 1/GPU ctx 2048", 1, 2048, 3}};
}

// Four of the 48 MoE layers, routing sampled past 65,536 tokens, one decode step.
CostOptions projection_options() {
  CostOptions o;
  o.max_layers = 4;
  o.max_routed_tokens = 65536;
  o.max_decode_steps = 1;
  return o;
}

// Each of `loads` on N GPUs (its sequences per GPU times N) with the CUDA runtime's exchange.
std::vector<CostPrediction> predict_loads(const ModelConfig& qwen, const HardwareProfile& h,
                                          const parallel::Placement& p, const RoutingSpec& routing,
                                          int N, const std::vector<Workload>& loads,
                                          const CostOptions& o, parallel::ExchangeKind kind) {
  std::vector<CostPrediction> preds;
  for (const Workload& w : loads) {
    CostWorkload cw;
    cw.num_sequences = w.seqs_per_rank * N;
    cw.prompt_len = w.prompt_len;
    cw.decode_steps = w.decode_steps;
    cw.routing = routing;
    bf16_exchange(cw, kind);
    preds.push_back(predict_cost(qwen, cw, p, h, o));
  }
  return preds;
}

nlohmann::json projections(const ModelConfig& qwen, const HardwareProfile& h) {
  nlohmann::json out = nlohmann::json::array();
  const std::vector<std::string> strategies = {"contiguous", "round_robin", "load_balanced",
                                               "replicated"};
  const std::vector<std::pair<std::string, RoutingSpec>> routings = projection_routings();
  const std::vector<Workload> loads = projection_loads();
  const CostOptions o = projection_options();
  fmt::print("\n## Qwen3-30B-A3B on {} GPUs (cost model, flat exchange)\n\n", h.name);
  fmt::print(
      "| GPUs | routing | placement | prefill s | prefill tok/s | decode 128/GPU step ms | "
      "decode tok/s | batch-1/GPU step ms | balancedness (prefill) |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|\n");
  for (int N : {8, 16, 32, 64, 128, 256}) {
    for (const auto& [rname, routing] : routings) {
      for (const std::string& strategy : strategies) {
        const std::string placement_name =
            strategy == "replicated" ? fmt::format("replicated:{}", std::max(N, 32)) : strategy;
        const parallel::Placement p =
            make_cost_placement(placement_name, qwen, routing, 1, N, 8192);
        nlohmann::json entry = {{"gpus", N}, {"routing", rname}, {"placement", placement_name}};
        const std::vector<CostPrediction> preds =
            predict_loads(qwen, h, p, routing, N, loads, o, parallel::ExchangeKind::kFlat);
        const double prefill_s = preds[0].prefill_s();
        const double prefill_tps = preds[0].prefill.tokens / prefill_s;
        const double dec_s = preds[1].decode_step_s();
        const double dec_tps = preds[1].decode.tokens / dec_s;
        const double b1_s = preds[2].decode_step_s();
        entry["prefill_s"] = prefill_s;
        entry["prefill_tokens_per_s"] = prefill_tps;
        entry["decode_step_s"] = dec_s;
        entry["decode_tokens_per_s"] = dec_tps;
        entry["decode_batch1_step_s"] = b1_s;
        entry["decode_batch1_tokens_per_s"] = preds[2].decode.tokens / b1_s;
        entry["prefill_balancedness"] = preds[0].prefill.balancedness;
        entry["prefill_phases"] = preds[0].to_json()["prefill"]["phases"];
        entry["decode_phases"] = preds[1].to_json()["decode_step"]["phases"];
        entry["batch1_phases"] = preds[2].to_json()["decode_step"]["phases"];
        fmt::print("| {} | {} | {} | {:.4f} | {:.0f} | {:.2f} | {:.0f} | {:.2f} | {:.3f} |\n", N,
                   rname, placement_name, prefill_s, prefill_tps, dec_s * 1e3, dec_tps, b1_s * 1e3,
                   preds[0].prefill.balancedness);
        out.push_back(entry);
      }
    }
  }
  return out;
}

// Flat vs node-first exchange side by side from 16 GPUs (2 nodes) on: the same workloads as the
// projections, contiguous and replicated placements.
nlohmann::json exchanges(const ModelConfig& qwen, const HardwareProfile& h) {
  nlohmann::json out = nlohmann::json::array();
  const std::vector<std::pair<std::string, RoutingSpec>> routings = projection_routings();
  const std::vector<Workload> loads = projection_loads();
  const CostOptions o = projection_options();
  fmt::print("\n## Qwen3-30B-A3B on {} nodes of {}: flat vs node-first exchange (cost model)\n\n",
             h.name, h.ranks_per_node);
  fmt::print(
      "| GPUs | routing | placement | prefill s flat / node-first | decode 128/GPU step ms flat / "
      "node-first | batch-1/GPU step ms flat / node-first | inter-node rows/token (prefill) flat "
      "/ node-first |\n|---|---|---|---|---|---|---|\n");
  for (int N : {16, 32, 64, 128, 256}) {
    for (const auto& [rname, routing] : routings) {
      for (const std::string& placement_name :
           {std::string("contiguous"), fmt::format("replicated:{}", std::max(N, 32))}) {
        const parallel::Placement p =
            make_cost_placement(placement_name, qwen, routing, 1, N, 8192);
        nlohmann::json entry = {{"gpus", N}, {"routing", rname}, {"placement", placement_name}};
        std::string cells[4];
        for (const auto kind :
             {parallel::ExchangeKind::kFlat, parallel::ExchangeKind::kHierarchical}) {
          const std::vector<CostPrediction> preds =
              predict_loads(qwen, h, p, routing, N, loads, o, kind);
          const char* sep = kind == parallel::ExchangeKind::kFlat ? "" : " / ";
          cells[0] += fmt::format("{}{:.3f}", sep, preds[0].prefill_s());
          cells[1] += fmt::format("{}{:.1f}", sep, preds[1].decode_step_s() * 1e3);
          cells[2] += fmt::format("{}{:.2f}", sep, preds[2].decode_step_s() * 1e3);
          cells[3] += fmt::format("{}{:.2f}", sep, preds[0].prefill.inter_node_rows_per_token);
          entry[parallel::exchange_kind_name(kind)] = {
              {"prefill_s", preds[0].prefill_s()},
              {"decode_step_s", preds[1].decode_step_s()},
              {"decode_batch1_step_s", preds[2].decode_step_s()},
              {"prefill_inter_node_rows_per_token", preds[0].prefill.inter_node_rows_per_token},
              {"prefill_phases", preds[0].to_json()["prefill"]["phases"]},
              {"decode_phases", preds[1].to_json()["decode_step"]["phases"]},
              {"batch1_phases", preds[2].to_json()["decode_step"]["phases"]}};
        }
        fmt::print("| {} | {} | {} | {} | {} | {} | {} |\n", N, rname, placement_name, cells[0],
                   cells[1], cells[2], cells[3]);
        out.push_back(entry);
      }
    }
  }
  return out;
}

nlohmann::json workstation(const ModelConfig& qwen, const std::vector<HardwareProfile>& cards,
                           const HardwareProfile& h200) {
  nlohmann::json out = nlohmann::json::array();
  fmt::print("\n## Workstation: PCIe cards vs one H200 (Qwen3-30B-A3B, bf16, context 4096)\n\n");
  fmt::print(
      "| setup | batch | GiB per card (plan) | fits | prefill tok/s (batch x 4092) | "
      "decode tok/s | decode step ms |\n|---|---|---|---|---|---|---|\n");
  CostOptions o;
  o.max_layers = 4;
  o.max_routed_tokens = 65536;
  o.max_decode_steps = 1;
  struct Setup {
    const HardwareProfile* h;
    int n;
  };
  std::vector<Setup> setups = {{&h200, 1}};
  for (const HardwareProfile& c : cards) {
    setups.push_back({&c, 2});
    setups.push_back({&c, 4});
  }
  for (const Setup& s : setups) {
    for (int64_t batch : {1, 8, 32, 128}) {
      PlanOptions po;
      po.batch = batch;
      po.context = 4096;
      po.gpu_mem_gib = s.h->memory_gib;
      po.ranks = {s.n};
      const PlanReport plan = make_plan(qwen, po);
      const RankMemory& m = plan.ranks.front();
      RoutingSpec routing;
      routing.kind = "uniform";
      const parallel::Placement p = make_cost_placement("contiguous", qwen, routing, 1, s.n);
      CostWorkload w;
      w.num_sequences = batch;
      w.prompt_len = 4092;  // + 3 decode steps: the plan's context of 4096
      w.decode_steps = 3;
      w.routing = routing;
      bf16_exchange(w);
      const CostPrediction pred = predict_cost(qwen, w, p, *s.h, o);
      const double gib = static_cast<double>(m.total_bytes) / (1ull << 30);
      const std::string setup = fmt::format("{} x {}", s.n, s.h->name);
      fmt::print("| {} | {} | {:.1f} | {} | {:.0f} | {:.0f} | {:.2f} |\n", setup, batch, gib,
                 m.fits ? "yes" : "no", pred.prefill.tokens / pred.prefill_s(),
                 pred.decode.tokens / pred.decode_step_s(), pred.decode_step_s() * 1e3);
      out.push_back({{"setup", setup},
                     {"cards", s.n},
                     {"hardware", s.h->name},
                     {"batch", batch},
                     {"gib_per_card", gib},
                     {"fits", m.fits},
                     {"prefill_tokens_per_s", pred.prefill.tokens / pred.prefill_s()},
                     {"decode_tokens_per_s", pred.decode.tokens / pred.decode_step_s()},
                     {"decode_step_s", pred.decode_step_s()},
                     {"decode_phases", pred.to_json()["decode_step"]["phases"]}});
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, dir = "configs";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--json")) json_path = argv[i + 1];
    if (!std::strcmp(argv[i], "--configs")) dir = argv[i + 1];
  }
  try {
    const ModelConfig qwen = load_model_config(dir + "/models/qwen3-30b-a3b.yaml");
    const HardwareProfile h100 = load_hardware_profile(dir + "/hardware/h100-8gpu.yaml");
    const HardwareProfile h200 = load_hardware_profile(dir + "/hardware/h200-8gpu.yaml");
    std::vector<HardwareProfile> cards = {load_hardware_profile(dir + "/hardware/pcie4-24gb.yaml"),
                                          load_hardware_profile(dir + "/hardware/pcie4-48gb.yaml"),
                                          load_hardware_profile(dir + "/hardware/pcie5-32gb.yaml")};
    nlohmann::json j;
    j["anchors"] = anchors(h100);
    j["projections"] = projections(qwen, h100);
    j["exchanges"] = exchanges(qwen, h100);
    j["workstation"] = workstation(qwen, cards, h200);
    if (!json_path.empty()) std::ofstream(json_path) << j.dump(1) << "\n";
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_cost_projections: {}\n", e.what());
    return 1;
  }
  return 0;
}
