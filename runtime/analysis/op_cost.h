// What one op costs on one rank under a hardware profile (hardware.h): a GEMM, an element-wise op
// or copy, an all_to_all_v, and the share of the hardware a rank gets when ranks share a node.
// The cost model (cost_model.h) adds them up per phase; `moe-ep calibrate` measures the profile.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "runtime/analysis/hardware.h"

namespace moe::runtime {

// The profile's units: GFLOP/s and GB/s (1e9), microseconds.
inline constexpr double kGiga = 1e9;
inline constexpr double kMicro = 1e-6;

// Effective share of the hardware one rank gets: GPU 1; CPU threads x min(1, cores / (ranks on
// the node x threads)), since ranks beyond the cores time-share them; times a measured entry's
// compute_scale for this rank count (contention calibrate saw with every rank computing).
double rank_compute_share(const HardwareProfile& h, int num_ranks, int threads);

// GFLOP/s of a rate table (hardware.h) at `rows`: log-linear between entries, clamped at ends.
double table_gflops(const std::vector<std::pair<int64_t, double>>& table, double rows);
// Seconds of one GEMM [rows, in] x [out, in]^T at `share` (launch overhead included). The rate
// is grouped when `grouped`, else decode-sized below h.decode_rows_max rows, else prefill-sized;
// a profile's measured table for the class replaces rate and weight-read term.
double gemm_seconds(const HardwareProfile& h, double share, int64_t rows, int64_t in, int64_t out,
                    bool grouped = false);
// Seconds of an element-wise op or copy moving `bytes` (read + write), launch included.
double memory_seconds(const HardwareProfile& h, double share, double bytes);
// Which communicator a collective runs on: the job's, or one node's ranks (the second level of
// the node-first exchange, parallel/dispatcher.h).
enum class CollectiveScope { kJob, kNode };

// Ranks per node as the exchange is priced: a measured entry for num_ranks prices its own nodes
// (one node of num_ranks unless it was calibrated across several), else comm.ranks_per_node.
int priced_ranks_per_node(const HardwareProfile& h, int num_ranks);
// Fixed cost of one collective of `scope` in a job of num_ranks ranks, and the extra wait of one
// that follows compute (ranks time-sharing cores). A measured entry calibrated across nodes
// carries both for the node's communicator; elsewhere the node's are the job's.
double collective_overhead_seconds(const HardwareProfile& h, int num_ranks, CollectiveScope scope);
double collective_sync_seconds(const HardwareProfile& h, int num_ranks, CollectiveScope scope);
// True when the exchange of `scope` goes through a node-shared arena (parallel::SharedArena): a
// CPU job's communicator whose ranks all share one node (the whole job on one node, or a node's
// own level of the node-first exchange). The pack is then the transfer: no bytes cross a link.
bool over_shared_arena(const HardwareProfile& h, int num_ranks, CollectiveScope scope);
// Seconds of one all_to_all_v on `rank` of `num_ranks` that sends send_bytes[p] to and receives
// recv_bytes[p] from each rank p (job ranks; own entries ignored): the collective overhead of
// `scope`, a latency per peer exchanged with, and the larger direction over the link bandwidth;
// intra- and inter-node peers proceed concurrently. A profile's measured entry for num_ranks
// replaces the links. A kNode exchange has peers on this rank's node only. Over a shared arena
// only the overhead is left (the receivers read the rows in place, priced with their readers).
double exchange_seconds(const HardwareProfile& h, int num_ranks, int rank,
                        std::span<const double> send_bytes, std::span<const double> recv_bytes,
                        CollectiveScope scope = CollectiveScope::kJob);

}  // namespace moe::runtime
