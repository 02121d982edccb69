// Hardware profiles for the cost model: what one machine computes, moves and pays per op, as
// plain data read from YAML (configs/hardware/*.yaml, or written by `moe-ep calibrate`).
// Units are in the names (GFLOP/s, GB/s = 1e9 bytes/s, microseconds); validate() checks every
// value is positive and finite where the model divides by it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::runtime {

// How a GEMM's weight-read time and its FLOP time combine. kMax: a roofline (GPU kernels
// stream weights while they compute). kSum: the CPU backend converts each bf16 weight block to
// fp32 before its sgemm, so the two costs add.
enum class GemmOverlap { kMax, kSum };

// One link class of the communicator (intra-node or inter-node), or one measured rank count.
struct LinkProfile {
  double latency_us = 0;      // per peer message of one collective
  double bandwidth_gbps = 0;  // per rank, one direction, GB/s
};

// A communicator measured at exactly `ranks` ranks on one node (calibrate under mpirun -np N).
// When the run's rank count has an entry, it replaces comm.intra_node and the overhead.
struct MeasuredComm {
  int ranks = 0;
  double collective_overhead_us = 0;
  LinkProfile link;
  // Extra wait of a collective that follows compute: when ranks time-share cores, a rank that
  // is descheduled holds everyone up (measured as compute + collective minus compute alone).
  double sync_us = 0;
  // Per-rank compute rate when all `ranks` compute at once, relative to one rank alone times the
  // core share (rank_compute_share): memory-bandwidth contention, other load. 1 = no loss.
  double compute_scale = 1;
  // Calibrated across nodes: nodes of this many ranks, peers on another node priced with
  // inter_link and peers on this node with `link`. 0: one node (`link` for every peer).
  int ranks_per_node = 0;
  LinkProfile inter_link{};
  // Calibrated across nodes: one collective on a node's own communicator (the node-first
  // exchange's second level), its fixed cost and its wait after compute. < 0: not measured, the
  // job-wide collective_overhead_us and sync_us stand in.
  double node_collective_overhead_us = -1;
  double node_sync_us = -1;
};

struct HardwareProfile {
  std::string name;
  std::string kind = "gpu";  // gpu | cpu
  std::string source;        // file it came from (messages)

  // Compute. Rates are per rank (GPU) or per core (CPU: a rank gets threads x the rate, shared
  // when the node's ranks x threads exceed its cores).
  double prefill_gemm_gflops = 0;  // dense GEMM with many rows (prefill projections, lm_head)
  double decode_gemm_gflops = 0;   // dense GEMM with few rows (decode)
  double grouped_gemm_gflops = 0;  // grouped expert GEMM (SwiGLU experts)
  double attention_gflops = 0;     // QK^T and PV over the KV cache
  int64_t decode_rows_max = 64;    // a GEMM with fewer rows than this is decode-sized
  GemmOverlap gemm_overlap = GemmOverlap::kMax;
  int cores = 0;  // CPU: cores per node shared by its ranks; 0 for GPUs
  // Measured rates by row count (calibrate): dense GEMM GFLOP/s at `rows` rows, grouped expert
  // GEMM GFLOP/s at `rows` rows per expert, ascending. When present they replace the class rates
  // and the weight-read term (the measured time already holds the weight read): the CPU
  // backend's GEMM takes a different code path at 1, 2-3 and 4+ rows, which no two-term model
  // captures. Interpolated in log(rows); clamped at the ends.
  std::vector<std::pair<int64_t, double>> gemm_table;
  std::vector<std::pair<int64_t, double>> grouped_table;

  // Memory.
  double memory_bandwidth_gbps = 0;  // element-wise ops and copies (read + write bytes)
  double weight_read_gbps = 0;       // bf16 weights read by GEMMs (CPU: read + convert)
  double memory_gib = 0;             // per rank (GPU memory), for plan's "fits"

  // Fixed costs.
  double launch_overhead_us = 0;  // per op (kernel launch, or a host op's fixed cost)
  double layout_ns_per_pair = 0;  // host bookkeeping per (token, expert) pair and phase
  double topk_ns_per_logit = 0;   // router top-k (softmax, select) per (token, expert) logit
  // Measured per-token cost of a layer's row-wise ops (2 RMSNorms over H, q/k norms and RoPE
  // per head, the residual add); 0: priced by bytes over memory_bandwidth_gbps instead.
  double rowops_ns_per_token = 0;
  double attention_seq_us = 0;        // fixed cost per sequence and layer in the attention kernel
  double collective_overhead_us = 0;  // per collective, whatever its size

  // Communicator.
  int ranks_per_node = 1;
  LinkProfile intra_node;
  LinkProfile inter_node;
  std::vector<MeasuredComm> measured;  // calibrate's per-rank-count entries

  bool is_cpu() const { return kind == "cpu"; }
  // The measured entry for exactly `ranks` ranks, or nullptr.
  const MeasuredComm* measured_for(int ranks) const;
  // Throws moe::Error("config") naming source and the bad key.
  void validate() const;
};

// Reads a profile; errors name the file, key and line (parallel/yaml_util.h).
HardwareProfile load_hardware_profile(const std::string& path);
// YAML text that load_hardware_profile reads back to the same values; `header` lines are
// written first as comments.
std::string hardware_profile_yaml(const HardwareProfile& profile,
                                  const std::vector<std::string>& header = {});

}  // namespace moe::runtime
