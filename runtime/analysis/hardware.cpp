// Hardware profile YAML: reader (every key typed and range-checked where it is read, so an error
// names file, key and line) and writer (the same schema, for `moe-ep calibrate`).
#include "runtime/analysis/hardware.h"

#include <fmt/format.h>

#include <cmath>
#include <sstream>

#include "kernels/common/check.h"
#include "parallel/yaml_util.h"

namespace moe::runtime {
namespace y = parallel::yaml;
namespace {

double positive(const y::Doc& doc, const YAML::Node& map, const std::string& key,
                const std::string& path) {
  const double v = y::require<double>(doc, map, key, path);
  if (!(v > 0) || !std::isfinite(v)) y::fail(doc, map[key], path, "must be a positive number");
  return v;
}

double non_negative(const y::Doc& doc, const YAML::Node& map, const std::string& key,
                    const std::string& path, double fallback) {
  const double v = y::value_or<double>(doc, map, key, fallback, path);
  if (!(v >= 0) || !std::isfinite(v)) y::fail(doc, map[key], path, "must be >= 0");
  return v;
}

const YAML::Node section(const y::Doc& doc, const YAML::Node& root, const std::string& key) {
  const YAML::Node n = root[key];
  if (!n) y::fail(doc, root, key, "missing section");
  if (!n.IsMap()) y::fail(doc, n, key, "expected a mapping");
  return n;
}

LinkProfile read_link(const y::Doc& doc, const YAML::Node& map, const std::string& path) {
  if (!map.IsMap()) y::fail(doc, map, path, "expected a mapping {latency_us, bandwidth_gbps}");
  y::reject_unknown_keys(doc, map, {"latency_us", "bandwidth_gbps"}, path);
  LinkProfile l;
  l.latency_us = non_negative(doc, map, "latency_us", path + ".latency_us", 0);
  l.bandwidth_gbps = positive(doc, map, "bandwidth_gbps", path + ".bandwidth_gbps");
  return l;
}

// [[rows, gflops], ...] with rows ascending and positive rates.
std::vector<std::pair<int64_t, double>> read_table(const y::Doc& doc, const YAML::Node& map,
                                                   const std::string& key,
                                                   const std::string& path) {
  std::vector<std::pair<int64_t, double>> t;
  const YAML::Node n = map[key];
  if (!n) return t;
  if (!n.IsSequence()) y::fail(doc, n, path, "expected a list of [rows, gflops] pairs");
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string p = fmt::format("{}[{}]", path, i);
    if (!n[i].IsSequence() || n[i].size() != 2) y::fail(doc, n[i], p, "expected [rows, gflops]");
    const int64_t rows = y::as<int64_t>(doc, n[i][0], p + "[0]");
    const double g = y::as<double>(doc, n[i][1], p + "[1]");
    if (rows < 1 || (!t.empty() && rows <= t.back().first)) {
      y::fail(doc, n[i], p, "rows must be >= 1 and ascending");
    }
    if (!(g > 0) || !std::isfinite(g)) y::fail(doc, n[i], p, "gflops must be a positive number");
    t.emplace_back(rows, g);
  }
  return t;
}

std::string table_yaml(const std::vector<std::pair<int64_t, double>>& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.size(); ++i) {
    s += fmt::format("{}[{}, {:.5g}]", i ? ", " : "", t[i].first, t[i].second);
  }
  return s + "]";
}

// compute: GEMM and attention rates, decode shape limit, overlap rule, cores and rate tables.
void read_compute(const y::Doc& doc, HardwareProfile& h) {
  const YAML::Node c = section(doc, doc.root, "compute");
  y::reject_unknown_keys(
      doc, c,
      {"prefill_gemm_gflops", "decode_gemm_gflops", "grouped_gemm_gflops", "attention_gflops",
       "decode_rows_max", "gemm_overlap", "cores", "gemm_table", "grouped_table"},
      "compute");
  h.prefill_gemm_gflops = positive(doc, c, "prefill_gemm_gflops", "compute.prefill_gemm_gflops");
  h.decode_gemm_gflops = positive(doc, c, "decode_gemm_gflops", "compute.decode_gemm_gflops");
  h.grouped_gemm_gflops = positive(doc, c, "grouped_gemm_gflops", "compute.grouped_gemm_gflops");
  h.attention_gflops = positive(doc, c, "attention_gflops", "compute.attention_gflops");
  h.decode_rows_max =
      y::value_or<int64_t>(doc, c, "decode_rows_max", 64, "compute.decode_rows_max");
  if (h.decode_rows_max < 1) {
    y::fail(doc, c["decode_rows_max"], "compute.decode_rows_max", "must be >= 1");
  }
  const std::string overlap = y::value_or<std::string>(
      doc, c, "gemm_overlap", h.is_cpu() ? "sum" : "max", "compute.gemm_overlap");
  if (overlap != "max" && overlap != "sum") {
    y::fail(doc, c["gemm_overlap"], "compute.gemm_overlap",
            fmt::format("max or sum, got '{}'", overlap));
  }
  h.gemm_overlap = overlap == "sum" ? GemmOverlap::kSum : GemmOverlap::kMax;
  const int64_t cores = y::value_or<int64_t>(doc, c, "cores", 0, "compute.cores");
  if (h.is_cpu() && cores < 1) {
    y::fail(doc, c["cores"] ? c["cores"] : c, "compute.cores",
            "a cpu profile needs the cores of a node (>= 1): its ranks share them");
  }
  if (cores < 0) y::fail(doc, c["cores"], "compute.cores", "must be >= 0");
  h.cores = static_cast<int>(cores);
  h.gemm_table = read_table(doc, c, "gemm_table", "compute.gemm_table");
  h.grouped_table = read_table(doc, c, "grouped_table", "compute.grouped_table");
}

// memory: bandwidth, weight read rate (default: the bandwidth) and capacity.
void read_memory(const y::Doc& doc, HardwareProfile& h) {
  const YAML::Node m = section(doc, doc.root, "memory");
  y::reject_unknown_keys(doc, m, {"bandwidth_gbps", "weight_read_gbps", "capacity_gib"}, "memory");
  h.memory_bandwidth_gbps = positive(doc, m, "bandwidth_gbps", "memory.bandwidth_gbps");
  h.weight_read_gbps = m["weight_read_gbps"]
                           ? positive(doc, m, "weight_read_gbps", "memory.weight_read_gbps")
                           : h.memory_bandwidth_gbps;
  h.memory_gib = non_negative(doc, m, "capacity_gib", "memory.capacity_gib", 0);
}

// overhead: fixed costs per launch, pair, logit, token, sequence and collective.
void read_overhead(const y::Doc& doc, HardwareProfile& h) {
  const YAML::Node o = section(doc, doc.root, "overhead");
  y::reject_unknown_keys(doc, o,
                         {"launch_us", "layout_ns_per_pair", "topk_ns_per_logit",
                          "rowops_ns_per_token", "attention_seq_us", "collective_us"},
                         "overhead");
  h.launch_overhead_us = non_negative(doc, o, "launch_us", "overhead.launch_us", 0);
  h.layout_ns_per_pair =
      non_negative(doc, o, "layout_ns_per_pair", "overhead.layout_ns_per_pair", 0);
  h.topk_ns_per_logit = non_negative(doc, o, "topk_ns_per_logit", "overhead.topk_ns_per_logit", 0);
  h.rowops_ns_per_token =
      non_negative(doc, o, "rowops_ns_per_token", "overhead.rowops_ns_per_token", 0);
  h.attention_seq_us = non_negative(doc, o, "attention_seq_us", "overhead.attention_seq_us", 0);
  h.collective_overhead_us = non_negative(doc, o, "collective_us", "overhead.collective_us", 0);
}

// comm.measured[i]: one rank count's measured communicator; `earlier` are the entries before it.
MeasuredComm read_measured(const y::Doc& doc, const YAML::Node& e, const std::string& p,
                           const std::vector<MeasuredComm>& earlier) {
  if (!e.IsMap()) y::fail(doc, e, p, "expected a mapping");
  y::reject_unknown_keys(doc, e,
                         {"ranks", "collective_us", "latency_us", "bandwidth_gbps", "sync_us",
                          "compute_scale", "ranks_per_node", "inter_latency_us",
                          "inter_bandwidth_gbps", "node_collective_us", "node_sync_us"},
                         p);
  MeasuredComm mc;
  const int64_t r = y::require<int64_t>(doc, e, "ranks", p + ".ranks");
  if (r < 1) y::fail(doc, e["ranks"], p + ".ranks", "must be >= 1");
  for (const MeasuredComm& prev : earlier) {
    if (prev.ranks == r) y::fail(doc, e["ranks"], p + ".ranks", "listed twice");
  }
  mc.ranks = static_cast<int>(r);
  mc.collective_overhead_us = non_negative(doc, e, "collective_us", p + ".collective_us", 0);
  mc.link.latency_us = non_negative(doc, e, "latency_us", p + ".latency_us", 0);
  mc.link.bandwidth_gbps = positive(doc, e, "bandwidth_gbps", p + ".bandwidth_gbps");
  mc.sync_us = non_negative(doc, e, "sync_us", p + ".sync_us", 0);
  mc.compute_scale =
      e["compute_scale"] ? positive(doc, e, "compute_scale", p + ".compute_scale") : 1.0;
  if (e["ranks_per_node"]) {
    const int64_t g = y::require<int64_t>(doc, e, "ranks_per_node", p + ".ranks_per_node");
    if (g < 1 || r % g != 0) {
      y::fail(doc, e["ranks_per_node"], p + ".ranks_per_node",
              fmt::format("must be >= 1 and divide ranks ({})", r));
    }
    mc.ranks_per_node = static_cast<int>(g);
    mc.inter_link.latency_us = non_negative(doc, e, "inter_latency_us", p + ".inter_latency_us", 0);
    mc.inter_link.bandwidth_gbps =
        positive(doc, e, "inter_bandwidth_gbps", p + ".inter_bandwidth_gbps");
    if (e["node_collective_us"]) {
      mc.node_collective_overhead_us =
          non_negative(doc, e, "node_collective_us", p + ".node_collective_us", 0);
    }
    if (e["node_sync_us"])
      mc.node_sync_us = non_negative(doc, e, "node_sync_us", p + ".node_sync_us", 0);
  } else if (e["inter_bandwidth_gbps"] || e["inter_latency_us"] || e["node_collective_us"] ||
             e["node_sync_us"]) {
    y::fail(doc, e, p,
            "an inter-node link or node collective needs ranks_per_node (the nodes it was "
            "measured on)");
  }
  return mc;
}

// comm: ranks per node, the two links (inter_node defaults to intra_node) and measured entries.
void read_comm(const y::Doc& doc, HardwareProfile& h) {
  const YAML::Node k = section(doc, doc.root, "comm");
  y::reject_unknown_keys(doc, k, {"ranks_per_node", "intra_node", "inter_node", "measured"},
                         "comm");
  const int64_t rpn = y::value_or<int64_t>(doc, k, "ranks_per_node", 1, "comm.ranks_per_node");
  if (rpn < 1) y::fail(doc, k["ranks_per_node"], "comm.ranks_per_node", "must be >= 1");
  h.ranks_per_node = static_cast<int>(rpn);
  if (!k["intra_node"]) y::fail(doc, k, "comm.intra_node", "missing section");
  h.intra_node = read_link(doc, k["intra_node"], "comm.intra_node");
  h.inter_node =
      k["inter_node"] ? read_link(doc, k["inter_node"], "comm.inter_node") : h.intra_node;
  if (const YAML::Node ms = k["measured"]) {
    if (!ms.IsSequence()) y::fail(doc, ms, "comm.measured", "expected a list of entries");
    for (size_t i = 0; i < ms.size(); ++i) {
      h.measured.push_back(
          read_measured(doc, ms[i], fmt::format("comm.measured[{}]", i), h.measured));
    }
  }
}

}  // namespace

const MeasuredComm* HardwareProfile::measured_for(int ranks) const {
  for (const MeasuredComm& m : measured) {
    if (m.ranks == ranks) return &m;
  }
  return nullptr;
}

void HardwareProfile::validate() const {
  const auto bad = [&](const char* key, double v) {
    MOE_THROW("config", "{}: key '{}': must be a positive number, got {}", source, key, v);
  };
  const auto pos = [&](const char* key, double v) {
    if (!(v > 0) || !std::isfinite(v)) bad(key, v);
  };
  pos("compute.prefill_gemm_gflops", prefill_gemm_gflops);
  pos("compute.decode_gemm_gflops", decode_gemm_gflops);
  pos("compute.grouped_gemm_gflops", grouped_gemm_gflops);
  pos("compute.attention_gflops", attention_gflops);
  pos("memory.bandwidth_gbps", memory_bandwidth_gbps);
  pos("memory.weight_read_gbps", weight_read_gbps);
  pos("comm.intra_node.bandwidth_gbps", intra_node.bandwidth_gbps);
  pos("comm.inter_node.bandwidth_gbps", inter_node.bandwidth_gbps);
  MOE_CHECK_AS("config", kind == "gpu" || kind == "cpu", "{}: key 'kind': gpu or cpu, got '{}'",
               source, kind);
  MOE_CHECK_AS("config", ranks_per_node >= 1, "{}: key 'comm.ranks_per_node': must be >= 1",
               source);
  MOE_CHECK_AS("config", !is_cpu() || cores >= 1,
               "{}: key 'compute.cores': a cpu profile needs the cores of a node (>= 1)", source);
  for (const MeasuredComm& m : measured) {
    MOE_CHECK_AS("config", m.ranks >= 1 && m.link.bandwidth_gbps > 0,
                 "{}: key 'comm.measured': entry for {} ranks needs ranks >= 1 and a positive "
                 "bandwidth",
                 source, m.ranks);
  }
}

HardwareProfile load_hardware_profile(const std::string& path) {
  const y::Doc doc = y::load(path);
  const YAML::Node& root = doc.root;
  y::reject_unknown_keys(doc, root, {"name", "kind", "compute", "memory", "overhead", "comm"});
  HardwareProfile h;
  h.source = path;
  h.name = y::require<std::string>(doc, root, "name");
  h.kind = y::value_or<std::string>(doc, root, "kind", "gpu");
  if (h.kind != "gpu" && h.kind != "cpu") {
    y::fail(doc, root["kind"], "kind", fmt::format("gpu or cpu, got '{}'", h.kind));
  }
  read_compute(doc, h);
  read_memory(doc, h);
  read_overhead(doc, h);
  read_comm(doc, h);
  h.validate();
  return h;
}

std::string hardware_profile_yaml(const HardwareProfile& h,
                                  const std::vector<std::string>& header) {
  std::ostringstream out;
  // Rates, bandwidths and times: 6 significant digits.
  const auto number = [&](const char* key, double v) {
    out << fmt::format("  {}: {:.6g}\n", key, v);
  };
  for (const std::string& line : header) out << "# " << line << "\n";
  out << fmt::format("name: {}\nkind: {}\n", h.name, h.kind);
  out << "compute:\n";
  number("prefill_gemm_gflops", h.prefill_gemm_gflops);
  number("decode_gemm_gflops", h.decode_gemm_gflops);
  number("grouped_gemm_gflops", h.grouped_gemm_gflops);
  number("attention_gflops", h.attention_gflops);
  out << fmt::format("  decode_rows_max: {}\n", h.decode_rows_max);
  out << fmt::format("  gemm_overlap: {}\n", h.gemm_overlap == GemmOverlap::kSum ? "sum" : "max");
  if (h.cores > 0) out << fmt::format("  cores: {}\n", h.cores);
  if (!h.gemm_table.empty()) out << "  gemm_table: " << table_yaml(h.gemm_table) << "\n";
  if (!h.grouped_table.empty()) out << "  grouped_table: " << table_yaml(h.grouped_table) << "\n";
  out << "memory:\n";
  number("bandwidth_gbps", h.memory_bandwidth_gbps);
  number("weight_read_gbps", h.weight_read_gbps);
  if (h.memory_gib > 0) number("capacity_gib", h.memory_gib);
  out << "overhead:\n";
  number("launch_us", h.launch_overhead_us);
  number("layout_ns_per_pair", h.layout_ns_per_pair);
  number("topk_ns_per_logit", h.topk_ns_per_logit);
  number("rowops_ns_per_token", h.rowops_ns_per_token);
  number("attention_seq_us", h.attention_seq_us);
  number("collective_us", h.collective_overhead_us);
  out << "comm:\n";
  out << fmt::format("  ranks_per_node: {}\n", h.ranks_per_node);
  out << fmt::format("  intra_node: {{latency_us: {:.6g}, bandwidth_gbps: {:.6g}}}\n",
                     h.intra_node.latency_us, h.intra_node.bandwidth_gbps);
  out << fmt::format("  inter_node: {{latency_us: {:.6g}, bandwidth_gbps: {:.6g}}}\n",
                     h.inter_node.latency_us, h.inter_node.bandwidth_gbps);
  if (!h.measured.empty()) {
    out << "  measured:\n";
    for (const MeasuredComm& m : h.measured) {
      std::string nodes =
          m.ranks_per_node > 0
              ? fmt::format(
                    ", ranks_per_node: {}, inter_latency_us: {:.6g}, "
                    "inter_bandwidth_gbps: {:.6g}",
                    m.ranks_per_node, m.inter_link.latency_us, m.inter_link.bandwidth_gbps)
              : std::string();
      if (m.ranks_per_node > 0 && m.node_collective_overhead_us >= 0) {
        nodes += fmt::format(", node_collective_us: {:.6g}", m.node_collective_overhead_us);
      }
      if (m.ranks_per_node > 0 && m.node_sync_us >= 0) {
        nodes += fmt::format(", node_sync_us: {:.6g}", m.node_sync_us);
      }
      out << fmt::format(
          "    - {{ranks: {}, collective_us: {:.6g}, latency_us: {:.6g}, bandwidth_gbps: "
          "{:.6g}, sync_us: {:.6g}, compute_scale: {:.4g}{}}}\n",
          m.ranks, m.collective_overhead_us, m.link.latency_us, m.link.bandwidth_gbps, m.sync_us,
          m.compute_scale, nodes);
    }
  }
  return out.str();
}

}  // namespace moe::runtime
