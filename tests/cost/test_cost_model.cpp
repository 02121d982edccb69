// The cost model's arithmetic on cases small enough to compute by hand: compute share of ranks
// on shared cores, GEMM roofline / sum / measured table, exchanges over one or two nodes, and a
// whole prediction whose expert and dispatch phases follow from the routing exactly (top-k = E,
// so every token uses every expert); the link fit calibrate uses.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "kernels/common/check.h"
#include "runtime/analysis/calibrate.h"
#include "runtime/analysis/cost_model.h"
#include "runtime/analysis/hardware.h"
#include "tests/common/tiny_model.h"

namespace moe::runtime {
namespace {

HardwareProfile simple_gpu() {
  HardwareProfile h;
  h.name = "test";
  h.source = "test";
  h.prefill_gemm_gflops = 1000;
  h.decode_gemm_gflops = 100;
  h.grouped_gemm_gflops = 500;
  h.attention_gflops = 100;
  h.decode_rows_max = 64;
  h.memory_bandwidth_gbps = 100;
  h.weight_read_gbps = 100;
  h.launch_overhead_us = 0;
  h.ranks_per_node = 2;
  h.collective_overhead_us = 10;
  h.intra_node = {1, 10};  // 1 us per peer, 10 GB/s
  h.inter_node = {5, 1};   // 5 us per peer, 1 GB/s
  return h;
}

TEST(CostModel, CpuRanksBeyondCoresTimeShare) {
  HardwareProfile h = simple_gpu();
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 4, 1), 1.0);  // GPU: one device per rank
  h.kind = "cpu";
  h.cores = 2;
  h.ranks_per_node = 64;
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 1, 1), 1.0);
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 2, 1), 1.0);
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 4, 1), 0.5);  // 4 ranks on 2 cores
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 1, 0), 2.0);  // default threads: cores / ranks
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 1, 4), 2.0);  // 4 threads on 2 cores
  // Calibrated across nodes of 2 ranks: a rank shares its node's cores with 1 other, not 3.
  h.cores = 1;
  MeasuredComm across;
  across.ranks = 4;
  across.ranks_per_node = 2;
  across.compute_scale = 0.8;
  h.measured = {across};
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 4, 1), 0.5 * 0.8);
  h.measured.clear();
  EXPECT_DOUBLE_EQ(rank_compute_share(h, 4, 1), 0.25);  // one node of 64: all 4 on 1 core
}

TEST(CostModel, LinkFitKeepsTheLatencyWhenLargeTransfersAreNoisy) {
  // time = 20 us + bytes / 1 GB/s at calibrate's sizes (x 1 peer).
  const std::vector<double> x = {4096, 65536, 524288, 2097152, 8388608};
  std::vector<double> y;
  for (double b : x) y.push_back(20e-6 + b * 1e-9);
  LineFit f = relative_least_squares(x, y);
  EXPECT_NEAR(f.intercept, 20e-6, 1e-9);
  EXPECT_NEAR(f.slope, 1e-9, 1e-15);
  // The 8 MiB transfer 5% slower (one noisy sweep): the latency moves by under 1 us, where an
  // unweighted fit moves it by 30 us (to below zero).
  y.back() *= 1.05;
  f = relative_least_squares(x, y);
  EXPECT_NEAR(f.intercept, 20e-6, 1e-6);
  EXPECT_NEAR(f.slope, 1e-9, 0.1e-9);
}

TEST(CostModel, GemmRooflineSumAndTable) {
  HardwareProfile h = simple_gpu();
  // 128 rows x 1000 x 1000: 2.56e8 FLOP at 1000 GFLOP/s = 256 us; weights 2e6 B at 100 GB/s = 20
  // us.
  EXPECT_NEAR(gemm_seconds(h, 1.0, 128, 1000, 1000), 256e-6, 1e-12);
  // 2 rows: decode rate 100 GFLOP/s -> 40 us; weights 20 us; max = 40 us.
  EXPECT_NEAR(gemm_seconds(h, 1.0, 2, 1000, 1000), 40e-6, 1e-12);
  h.gemm_overlap = GemmOverlap::kSum;
  EXPECT_NEAR(gemm_seconds(h, 1.0, 2, 1000, 1000), 60e-6, 1e-12);
  EXPECT_NEAR(gemm_seconds(h, 0.5, 2, 1000, 1000), 120e-6, 1e-12);  // half a core
  // A table replaces rates and weight term: 4 rows sit halfway (log) between 2 and 8.
  h.gemm_table = {{2, 10}, {8, 30}};
  EXPECT_DOUBLE_EQ(table_gflops(h.gemm_table, 4), 20);
  EXPECT_DOUBLE_EQ(table_gflops(h.gemm_table, 1), 10);
  EXPECT_DOUBLE_EQ(table_gflops(h.gemm_table, 100), 30);
  EXPECT_NEAR(gemm_seconds(h, 1.0, 4, 1000, 1000), 8e6 / 20e9, 1e-12);
  h.launch_overhead_us = 3;
  EXPECT_NEAR(memory_seconds(h, 1.0, 1e6), 1e6 / 100e9 + 3e-6, 1e-12);
}

TEST(CostModel, ExchangeIntraAndInterNode) {
  const HardwareProfile h = simple_gpu();  // 2 ranks per node
  // 4 ranks, rank 0: peer 1 on its node, peers 2 and 3 on the other node. 1 MB to each.
  const std::vector<double> b = {0, 1e6, 1e6, 1e6};
  // intra: 1 us + 1e6 / 10e9 = 101 us; inter: 2 x 5 us + 2e6 / 1e9 = 2010 us; + 10 us overhead.
  EXPECT_NEAR(exchange_seconds(h, 4, 0, b, b), 10e-6 + 2010e-6, 1e-12);
  // Receiving more than sending: the larger direction counts.
  const std::vector<double> r = {0, 3e6, 0, 0};
  EXPECT_NEAR(exchange_seconds(h, 4, 0, std::vector<double>{0, 1e6, 0, 0}, r),
              10e-6 + 1e-6 + 3e6 / 10e9, 1e-12);
  EXPECT_DOUBLE_EQ(exchange_seconds(h, 1, 0, std::vector<double>{0}, std::vector<double>{0}), 0);
  // A measured entry for this rank count replaces links and overhead.
  HardwareProfile m = h;
  m.measured.push_back({4, 2, {0.5, 2}});
  EXPECT_NEAR(exchange_seconds(m, 4, 0, b, b), 2e-6 + 3 * 0.5e-6 + 3e6 / 2e9, 1e-12);
  // Measured across two nodes of two: its own links per node, whatever the profile's nodes.
  m.ranks_per_node = 4;
  m.measured.back().ranks_per_node = 2;
  m.measured.back().inter_link = {4, 0.5};
  // intra: 0.5 us + 1e6 / 2e9 = 500.5 us; inter: 2 x 4 us + 2e6 / 0.5e9 = 4008 us; + 2 us.
  EXPECT_NEAR(exchange_seconds(m, 4, 0, b, b), 2e-6 + 4008e-6, 1e-12);
  EXPECT_NEAR(exchange_seconds(m, 4, 0, std::vector<double>{0, 1e6, 0, 0},
                               std::vector<double>{0, 1e6, 0, 0}),
              2e-6 + 500.5e-6, 1e-12);
}

// A CPU job on one node exchanges through the shared arena: only the collective's fixed cost,
// whatever the bytes; across nodes the job's exchange pays its links, a node's own does not.
TEST(CostModel, ExchangeOverTheSharedArenaCostsTheOverheadOnly) {
  HardwareProfile h = simple_gpu();
  h.kind = "cpu";
  h.ranks_per_node = 4;
  const std::vector<double> b = {0, 1e6, 1e6, 1e6};
  EXPECT_TRUE(over_shared_arena(h, 4, CollectiveScope::kJob));
  EXPECT_NEAR(exchange_seconds(h, 4, 0, b, b), 10e-6, 1e-12);
  h.ranks_per_node = 2;
  EXPECT_FALSE(over_shared_arena(h, 4, CollectiveScope::kJob));
  EXPECT_NEAR(exchange_seconds(h, 4, 0, b, b), 10e-6 + 2010e-6, 1e-12);
  EXPECT_TRUE(over_shared_arena(h, 4, CollectiveScope::kNode));
  EXPECT_NEAR(exchange_seconds(h, 4, 0, std::vector<double>{0, 1e6, 0, 0},
                               std::vector<double>{0, 1e6, 0, 0}, CollectiveScope::kNode),
              collective_overhead_seconds(h, 4, CollectiveScope::kNode), 1e-12);
  h.kind = "gpu";  // NCCL moves the bytes
  EXPECT_FALSE(over_shared_arena(h, 4, CollectiveScope::kNode));
  EXPECT_FALSE(over_shared_arena(h, 1, CollectiveScope::kJob));
}

// One MoE layer of hidden 8 where every token uses every one of `experts` experts (top-k = E).
ModelConfig all_experts_model(const std::string& name, int experts) {
  ModelConfig c = test::tiny_model(name, {.vocab = 16,
                                          .hidden = 8,
                                          .layers = 1,
                                          .heads = 2,
                                          .kv_heads = 1,
                                          .head_dim = 4,
                                          .intermediate = 16,
                                          .moe_intermediate = 4,
                                          .experts = experts,
                                          .top_k = experts});
  c.norm_topk_prob = true;
  c.max_position_embeddings = 64;
  c.validate();
  return c;
}

ModelConfig two_expert_model() {
  return all_experts_model("two", 2);
}

// `sequences` sequences of 10 prompt tokens and one timed decode step, uniform routing.
CostWorkload uniform_workload(int64_t sequences) {
  CostWorkload w;
  w.num_sequences = sequences;
  w.prompt_len = 10;
  w.decode_steps = 2;
  w.routing.kind = "uniform";
  return w;
}

TEST(CostModel, ExpertAndDispatchPhasesFollowTheRouting) {
  const ModelConfig c = two_expert_model();
  HardwareProfile h = simple_gpu();
  h.memory_bandwidth_gbps = 1e12;  // element-wise work and weight reads vanish
  h.weight_read_gbps = 1e12;
  h.collective_overhead_us = 0;
  h.intra_node = {0, 1};  // 1 GB/s, no latency
  const CostWorkload w = uniform_workload(2);

  // One rank: both experts compute all 20 prefill tokens: 2 x 6 x 20 x H x I FLOP at 500 GFLOP/s.
  parallel::PlacementSpec spec;
  const parallel::Placement p1 = parallel::Placement::build(spec, c.moe_layers(), 2, 1);
  const CostPrediction one = predict_cost(c, w, p1, h);
  const double expert_flops = 2 * 6.0 * 20 * 8 * 4;
  EXPECT_NEAR(one.prefill.phase_s[static_cast<int>(Phase::kExpert)], expert_flops / 500e9, 1e-15);
  EXPECT_DOUBLE_EQ(one.prefill.balancedness, 1.0);
  EXPECT_EQ(one.prefill.tokens, 20);
  EXPECT_EQ(one.decode.tokens, 2);

  // Two ranks, one expert each: each rank sends each of its 10 tokens once to the other rank
  // (10 rows of 8 fp32 = 320 B, plus 10 x 2 route entries of 8 B = 160 B) and computes 20 pairs.
  const parallel::Placement p2 = parallel::Placement::build(spec, c.moe_layers(), 2, 2);
  const CostPrediction two = predict_cost(c, w, p2, h);
  EXPECT_NEAR(two.prefill.phase_s[static_cast<int>(Phase::kExpert)], expert_flops / 2 / 500e9,
              1e-15);
  EXPECT_DOUBLE_EQ(two.prefill.remote_rows_per_token, 1.0);
  // One message: rows and their route entries, at 1 GB/s (no count round trip).
  const double dispatch_comm = (320 + 160) / 1e9;
  EXPECT_NEAR(two.prefill.phase_s[static_cast<int>(Phase::kDispatch)], dispatch_comm, 1e-12);
  EXPECT_NEAR(two.prefill.phase_s[static_cast<int>(Phase::kCombine)], 320 / 1e9, 1e-12);
  // What a rank sends in the layer: its message (rows and routes), then the 10 rows back.
  EXPECT_DOUBLE_EQ(two.prefill.max_remote_bytes, 320 + 160 + 320);

  // bf16 rows both ways: half the row bytes; the route entries stay.
  CostWorkload bf16 = w;
  bf16.dispatch_row_bytes = bf16.combine_row_bytes = 2;
  const CostPrediction half = predict_cost(c, bf16, p2, h);
  EXPECT_DOUBLE_EQ(half.prefill.max_remote_bytes, 160 + 160 + 160);
  EXPECT_NEAR(half.prefill.phase_s[static_cast<int>(Phase::kDispatch)], (160 + 160) / 1e9, 1e-12);

  // Capacity below the 10 rows a rank sends: the spill exchange adds one collective's fixed cost
  // (here its 16 B of counts, 8 each way... one int64 per peer, at 1 GB/s).
  CostWorkload small = w;
  small.capacity_rows = 4;
  const CostPrediction spilled = predict_cost(c, small, p2, h);
  EXPECT_NEAR(spilled.prefill.phase_s[static_cast<int>(Phase::kDispatch)], dispatch_comm + 8 / 1e9,
              1e-12);

  // Overlap: two micro-batches per rank, here its one sequence and none (the empty second costs
  // nothing: no bytes, no latency, no launch cost in this profile). On a GPU profile half the
  // shorter of exchange and compute hides; on a CPU profile (MPI copies on the computing cores)
  // nothing does.
  CostWorkload over = w;
  over.overlap = true;
  const double comm = two.prefill.phase_s[static_cast<int>(Phase::kDispatch)] +
                      two.prefill.phase_s[static_cast<int>(Phase::kCombine)];
  EXPECT_NEAR(predict_cost(c, over, p2, h).prefill.total_s,
              two.prefill.total_s - 0.5 * std::min(comm, two.prefill.total_s - comm), 1e-15);
  HardwareProfile cpu = h;
  cpu.kind = "cpu";
  cpu.cores = 2;
  EXPECT_NEAR(predict_cost(c, over, p2, cpu).prefill.total_s,
              predict_cost(c, w, p2, cpu).prefill.total_s, 1e-15);

  // Ranks that time-share cores: a measured wait after compute joins each of the two
  // synchronisations of the (one) MoE layer, and the step.
  HardwareProfile shared = h;
  shared.measured.push_back({2, 0, {0, 1}, 100});
  const CostPrediction waited = predict_cost(c, w, p2, shared, {});
  EXPECT_NEAR(waited.prefill.phase_s[static_cast<int>(Phase::kDispatch)], dispatch_comm + 100e-6,
              1e-12);
  EXPECT_NEAR(waited.prefill.total_s - two.prefill.total_s, 200e-6, 1e-12);
}

// Node-first on 2 nodes x 2 ranks, every token on every rank (4 experts, top-4, expert e on rank
// e): rank r sends each of its 10 prefill tokens once to its own node (itself) and once to the
// rank of its local index on the other node (the proxy), which forwards it to both ranks there.
TEST(CostModel, NodeFirstExchangeCrossesOncePerNode) {
  const ModelConfig c = all_experts_model("four", 4);
  HardwareProfile h = simple_gpu();
  h.memory_bandwidth_gbps = 1e12;  // host work vanishes: the phases are the exchanges
  h.weight_read_gbps = 1e12;
  // Calibrated across 2 nodes of 2: job collective 10 us, the node's 3 us and 1 us of wait;
  // inside a node 1 GB/s, between nodes 0.5 GB/s, no per-peer latency.
  h.measured.push_back({4, 10, {0, 1}, 0, 1, 2, {0, 0.5}, 3, 1});
  const CostWorkload w = uniform_workload(4);
  parallel::PlacementSpec spec;
  const parallel::Placement p = parallel::Placement::build(spec, c.moe_layers(), 4, 4);

  const CostPrediction node_first = predict_cost(c, w, p, h);  // default: several nodes
  EXPECT_EQ(node_first.exchange, parallel::ExchangeKind::kHierarchical);
  EXPECT_EQ(node_first.ranks_per_node, 2);
  // Per token: 1 row to the other node; inside nodes 1 row to the own node's other rank and 1
  // forwarded by the proxy.
  EXPECT_DOUBLE_EQ(node_first.prefill.inter_node_rows_per_token, 1.0);
  EXPECT_DOUBLE_EQ(node_first.prefill.intra_node_rows_per_token, 2.0);
  // A row is 8 fp32 (32 B) with 4 route entries (32 B) out and 32 B back: 40 rows cross.
  EXPECT_DOUBLE_EQ(node_first.prefill.inter_node_bytes, 40 * 96);
  // Rank 0 sends: level 1, 10 rows + routes to proxy 2 (640 B) and the 10 rows proxy 2 sent it
  // back (320 B); level 2, as proxy, 20 rows + routes to rank 1 (1280 B) and 20 rows back (640 B).
  EXPECT_DOUBLE_EQ(node_first.prefill.max_remote_bytes, 640 + 320 + 1280 + 640);
  // Dispatch: level 1 (10 us + 640 B each way at 0.5 GB/s), level 2 (3 us + 1280 B at 1 GB/s, and
  // 1 us of node wait). Combine: 320 B at 0.5 GB/s + 10 us, 640 B at 1 GB/s + 3 us + 1 us.
  const auto phase = [](const StepCost& s, Phase ph) { return s.phase_s[static_cast<int>(ph)]; };
  EXPECT_NEAR(phase(node_first.prefill, Phase::kDispatch), (10 + 1.28 + 3 + 1.28 + 1) * 1e-6,
              1e-12);
  EXPECT_NEAR(phase(node_first.prefill, Phase::kCombine), (10 + 0.64 + 3 + 0.64 + 1) * 1e-6, 1e-12);

  CostWorkload flat_w = w;
  flat_w.exchange = parallel::ExchangeKind::kFlat;
  const CostPrediction flat = predict_cost(c, flat_w, p, h);
  EXPECT_EQ(flat.exchange, parallel::ExchangeKind::kFlat);
  EXPECT_DOUBLE_EQ(flat.prefill.inter_node_rows_per_token, 2.0);
  EXPECT_DOUBLE_EQ(flat.prefill.intra_node_rows_per_token, 1.0);
  EXPECT_DOUBLE_EQ(flat.prefill.inter_node_bytes, 80 * 96);
  EXPECT_DOUBLE_EQ(flat.prefill.max_remote_bytes, 3 * 640 + 3 * 320);
  // One collective each way: 640 B to the node's other rank at 1 GB/s beside 1280 B to the
  // other node at 0.5 GB/s; back 320 B beside 640 B.
  EXPECT_NEAR(phase(flat.prefill, Phase::kDispatch), (10 + 2.56) * 1e-6, 1e-12);
  EXPECT_NEAR(phase(flat.prefill, Phase::kCombine), (10 + 1.28) * 1e-6, 1e-12);

  // The node-first exchange needs whole nodes.
  HardwareProfile odd = simple_gpu();
  odd.ranks_per_node = 3;
  try {
    predict_cost(c, w, p, odd);
    ADD_FAILURE() << "4 ranks in nodes of 3 priced node-first";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not fill nodes of 3"), std::string::npos) << e.what();
  }
}

TEST(HardwareProfile, WrittenProfileReadsBack) {
  HardwareProfile h = simple_gpu();
  h.kind = "cpu";
  h.cores = 2;
  h.gemm_table = {{1, 5}, {4, 9.5}};
  h.measured.push_back({2, 3, {0, 4}, 250, 0.8});
  h.measured.push_back({4, 3, {0, 4}, 250, 0.8, 2, {7, 0.25}, 1.5, 0});  // across two nodes
  const auto path = std::filesystem::temp_directory_path() / "moe_cost_profile.yaml";
  std::ofstream(path) << hardware_profile_yaml(h, {"test"});
  const HardwareProfile r = load_hardware_profile(path.string());
  EXPECT_EQ(r.cores, 2);
  EXPECT_DOUBLE_EQ(r.prefill_gemm_gflops, 1000);
  ASSERT_EQ(r.gemm_table.size(), 2u);
  EXPECT_DOUBLE_EQ(r.gemm_table[1].second, 9.5);
  ASSERT_EQ(r.measured.size(), 2u);
  EXPECT_DOUBLE_EQ(r.measured[0].link.bandwidth_gbps, 4);
  EXPECT_EQ(r.measured[0].ranks_per_node, 0);
  EXPECT_EQ(r.measured[1].ranks_per_node, 2);
  EXPECT_DOUBLE_EQ(r.measured[1].inter_link.latency_us, 7);
  EXPECT_DOUBLE_EQ(r.measured[1].inter_link.bandwidth_gbps, 0.25);
  EXPECT_DOUBLE_EQ(r.measured[1].node_collective_overhead_us, 1.5);
  EXPECT_DOUBLE_EQ(r.measured[1].node_sync_us, 0);
  EXPECT_LT(r.measured[0].node_collective_overhead_us, 0);  // one node: none written, none read
  EXPECT_DOUBLE_EQ(r.measured[0].sync_us, 250);
  EXPECT_DOUBLE_EQ(r.measured[0].compute_scale, 0.8);
  EXPECT_DOUBLE_EQ(r.inter_node.latency_us, 5);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace moe::runtime
