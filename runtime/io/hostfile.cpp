// Hostfile reading: one node per line, slots required and equal on every node.
#include "runtime/io/hostfile.h"

#include <fmt/format.h>

#include <charconv>
#include <fstream>
#include <sstream>

#include "kernels/common/check.h"

namespace moe::runtime {
namespace {

// The N of `key=N`, or throws naming the place.
int hostfile_count(const std::string& word, size_t eq, const std::string& where) {
  int v = 0;
  const char* b = word.data() + eq + 1;
  const char* e = word.data() + word.size();
  const auto [ptr, ec] = std::from_chars(b, e, v);
  MOE_CHECK_AS("config", ec == std::errc() && ptr == e && v >= 1,
               "{}: '{}' needs a whole number >= 1 after '='", where, word);
  return v;
}

}  // namespace

Hostfile parse_hostfile(const std::string& text, const std::string& source) {
  Hostfile hf;
  hf.source = source;
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    HostEntry e;
    e.line = n;
    if (!(words >> e.host)) continue;
    const std::string where = fmt::format("{}:{}", source, n);
    int max_slots = 0;
    for (std::string w; words >> w;) {
      const size_t eq = w.find('=');
      const std::string key = w.substr(0, eq);
      MOE_CHECK_AS("config", eq != std::string::npos && (key == "slots" || key == "max_slots"),
                   "{}: unexpected '{}' after host {} (expected slots=N or max_slots=N)", where, w,
                   e.host);
      (key == "slots" ? e.slots : max_slots) = hostfile_count(w, eq, where);
    }
    MOE_CHECK_AS("config", e.slots > 0,
                 "{}: host {} has no slots=N (moe-ep needs the ranks of every node)", where,
                 e.host);
    MOE_CHECK_AS("config", max_slots == 0 || max_slots >= e.slots,
                 "{}: host {} has max_slots={} below slots={}", where, e.host, max_slots, e.slots);
    for (const HostEntry& other : hf.hosts) {
      MOE_CHECK_AS("config", other.host != e.host, "{}: host {} is already listed on line {}",
                   where, e.host, other.line);
    }
    if (!hf.hosts.empty()) {
      const HostEntry& first = hf.hosts.front();
      MOE_CHECK_AS("config", e.slots == first.slots,
                   "{}: mismatched node layout: host {} has slots={} but {} (line {}) has "
                   "slots={}; every node must hold the same number of ranks",
                   where, e.host, e.slots, first.host, first.line, first.slots);
    }
    hf.hosts.push_back(e);
  }
  MOE_CHECK_AS("config", !hf.hosts.empty(), "{}: no hosts (expected lines of `host slots=N`)",
               source);
  return hf;
}

Hostfile load_hostfile(const std::string& path) {
  std::ifstream in(path);
  MOE_CHECK_AS("config", static_cast<bool>(in), "hostfile {}: cannot open it", path);
  std::stringstream text;
  text << in.rdbuf();
  return parse_hostfile(text.str(), path);
}

void Hostfile::check_ranks(int ranks, const std::string& what) const {
  MOE_CHECK_AS("config", ranks <= total_slots(),
               "{}: {} ranks do not fit hostfile {} ({} hosts x {} slots = {})", what, ranks,
               source, hosts.size(), slots_per_node(), total_slots());
  MOE_CHECK_AS("config", ranks <= slots_per_node() || ranks % slots_per_node() == 0,
               "{}: mismatched node layout: {} ranks fill hostfile {}'s nodes of {} as {} full "
               "nodes and one of {}; use a multiple of {}",
               what, ranks, source, slots_per_node(), ranks / slots_per_node(),
               ranks % slots_per_node(), slots_per_node());
}

}  // namespace moe::runtime
