// Open MPI hostfiles (`host slots=N` per line, `#` comments), read for what moe-ep needs of them:
// the nodes in order and their ranks. moe-ep's node-first exchange and hierarchical placement
// need every node to hold the same number of ranks, so unequal slots are refused here, before a
// job starts, with the same words the runtime uses ("mismatched node layout").
#pragma once

#include <string>
#include <vector>

namespace moe::runtime {

struct HostEntry {
  std::string host;
  int slots = 0;
  int line = 0;  // 1-based, for messages
};

struct Hostfile {
  std::string source;
  std::vector<HostEntry> hosts;
  int slots_per_node() const { return hosts.front().slots; }
  int total_slots() const { return slots_per_node() * static_cast<int>(hosts.size()); }
  // Throws moe::Error("config") unless `ranks` fill whole nodes in order (or fit in the first
  // one), which is how mpirun places them: e.g. 3 ranks on nodes of 2 would be nodes of 2 and 1.
  void check_ranks(int ranks, const std::string& what) const;
};

// Parses hostfile text; every error names source:line. Each line is `host` followed by
// `slots=N` (N >= 1; max_slots=M is accepted and must be >= N); a host may appear once.
Hostfile parse_hostfile(const std::string& text, const std::string& source);
Hostfile load_hostfile(const std::string& path);

}  // namespace moe::runtime
