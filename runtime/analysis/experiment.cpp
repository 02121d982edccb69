// Placement experiments: the YAML schema and its checks, the cell loop of both modes, and the
// three result files. analyze: one generated routing per workload (2 x tokens rows: the first
// half fits the placements, the second half measures them); run: one `moe-ep run` per cell.
#include "runtime/analysis/experiment.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "kernels/common/check.h"
#include "parallel/yaml_util.h"
#include "runtime/io/config.h"
#include "runtime/io/hostfile.h"
#include "runtime/model/synthetic_routing.h"

namespace moe::runtime {
namespace {

namespace y = parallel::yaml;
namespace fs = std::filesystem;

std::string resolve(const std::string& base_file, const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  const fs::path beside = fs::path(base_file).parent_path() / path;
  std::error_code ec;
  return fs::exists(beside, ec) ? beside.lexically_normal().string() : path;
}

std::string flow_yaml(const YAML::Node& node) {
  YAML::Emitter e;
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << node;
  return e.c_str();
}

StrategySpec parse_strategy(const y::Doc& doc, const YAML::Node& node, const std::string& key) {
  y::reject_unknown_keys(
      doc, node, {"name", "strategy", "redundant", "ranks_per_node", "min_balancedness"}, key);
  StrategySpec s;
  s.name = y::require<std::string>(doc, node, "strategy", key + ".strategy");
  const auto& names = strategy_names();
  if (std::find(names.begin(), names.end(), s.name) == names.end()) {
    y::fail(doc, node["strategy"], key + ".strategy",
            fmt::format("unknown strategy '{}' (known: {})", s.name, fmt::join(names, ", ")));
  }
  // ranks_per_node describes the nodes (any strategy); redundant slots are replicated's alone.
  auto non_negative = [&](const char* k, bool replicated_only) {
    const int64_t v = y::value_or<int64_t>(doc, node, k, 0, key + "." + k);
    if (v < 0 || v > (1 << 20)) y::fail(doc, node[k], key + "." + k, "expected an integer >= 0");
    if (v > 0 && replicated_only && s.name != "replicated") {
      y::fail(doc, node[k], key + "." + k,
              fmt::format("only strategy 'replicated' takes '{}' (this is '{}')", k, s.name));
    }
    return static_cast<int>(v);
  };
  s.redundant = non_negative("redundant", true);
  s.ranks_per_node = non_negative("ranks_per_node", false);
  s.min_balancedness =
      y::value_or<double>(doc, node, "min_balancedness", 0.9, key + ".min_balancedness");
  if (!(s.min_balancedness > 0 && s.min_balancedness <= 1)) {
    y::fail(doc, node["min_balancedness"], key + ".min_balancedness", "expected a value in (0, 1]");
  }
  return s;
}

// Runs `cmd` through the shell; returns its exit status (128 + signal when killed). This process
// may itself be a rank started by mpirun: its OMPI_/PMIX_/OPAL_ variables would make a child mpirun
// think it is one of our ranks, so the child shell drops them first.
int shell(const std::string& cmd) {
  const std::string clean =
      "for v in $(env | sed -n 's/^\\(OMPI_[^=]*\\|PMIX_[^=]*\\|OPAL_[^=]*\\)=.*/\\1/p'); do "
      "unset \"$v\"; done; " +
      cmd;
  const int status = std::system(clean.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status)
                           : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) {
    s.replace(p, from.size(), to);
  }
  return s;
}

std::string file_label(std::string s) {
  for (char& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') c = '_';
  }
  return s;
}

// Rows [begin, begin + count) of every layer.
RoutingTrace rows_of(const RoutingTrace& t, int64_t begin, int64_t count) {
  RoutingTrace out = t;
  const size_t k = static_cast<size_t>(t.top_k);
  for (size_t i = 0; i < t.layers.size(); ++i) {
    out.ids[i].assign(t.ids[i].begin() + static_cast<std::ptrdiff_t>(begin * k),
                      t.ids[i].begin() + static_cast<std::ptrdiff_t>((begin + count) * k));
    out.weights[i].clear();
  }
  return out;
}

double gb(int64_t bytes) {
  return static_cast<double>(bytes) / 1e9;
}

double dedup_saved(const parallel::ExchangeStats& x) {
  return x.bytes_remote_without_dedup > 0
             ? 1.0 - static_cast<double>(x.bytes_sent_remote) /
                         static_cast<double>(x.bytes_remote_without_dedup)
             : 0.0;
}

// A run's metrics JSON as a PlacementReport (summary fields only; per-rank pairs summed).
// num_tokens counts (token, layer, step) visits, with one pseudo-layer, so the per-token figures
// are per token and MoE layer as in analyze mode.
PlacementReport report_from_run(const nlohmann::json& m, int ranks, int64_t top_k) {
  PlacementReport r;
  r.num_ranks = ranks;
  const auto& load = m.at("load");
  r.mean_balancedness = load.at("mean_balancedness").get<double>();
  r.min_balancedness = load.at("min_balancedness").get<double>();
  r.mean_max_vio = load.at("mean_max_vio").get<double>();
  r.worst_max_vio = load.at("worst_max_vio").get<double>();
  const auto& t = m.at("traffic");
  r.traffic.bytes_sent_remote = t.at("bytes_sent_remote").get<int64_t>();
  r.traffic.bytes_kept_local = t.at("bytes_kept_local").get<int64_t>();
  r.traffic.bytes_remote_without_dedup = t.at("bytes_remote_without_dedup").get<int64_t>();
  r.traffic.rows_sent_remote = t.at("rows_sent_remote").get<int64_t>();
  r.traffic.rows_kept_local = t.at("rows_kept_local").get<int64_t>();
  r.traffic.pairs_remote = t.at("pairs_remote").get<int64_t>();
  r.pairs_per_rank.assign(static_cast<size_t>(ranks), 0);
  int64_t pairs = 0;
  for (const auto& l : m.value("layers", nlohmann::json::array())) {
    const auto per_rank = l.at("tokens_per_rank").get<std::vector<int64_t>>();
    for (size_t i = 0; i < per_rank.size() && i < r.pairs_per_rank.size(); ++i) {
      r.pairs_per_rank[i] += per_rank[i];
      pairs += per_rank[i];
    }
  }
  r.num_tokens = pairs / std::max<int64_t>(top_k, 1);
  r.layers = {0};
  r.loads.resize(1);
  return r;
}

// ranks: a non-empty list of rank counts in 1..1024.
std::vector<int> parse_ranks(const y::Doc& doc) {
  const YAML::Node ranks = doc.root["ranks"];
  if (!ranks.IsDefined())
    y::fail(doc, doc.root, "ranks", "missing required key (a list of rank counts)");
  if (!ranks.IsSequence() || ranks.size() == 0) {
    y::fail(doc, ranks, "ranks", "expected a non-empty list of rank counts, e.g. [4, 8]");
  }
  std::vector<int> out;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const int64_t n = y::as<int64_t>(doc, ranks[i], fmt::format("ranks[{}]", i));
    if (n < 1 || n > 1024) {
      y::fail(doc, ranks[i], fmt::format("ranks[{}]", i),
              fmt::format("a rank count must be in 1..1024, got {}", n));
    }
    out.push_back(static_cast<int>(n));
  }
  return out;
}

// placements: a non-empty list of strategies, each named (default: its label).
std::vector<ExperimentPlacement> parse_placements(const y::Doc& doc) {
  const YAML::Node placements = doc.root["placements"];
  if (!placements.IsDefined()) y::fail(doc, doc.root, "placements", "missing required key");
  if (!placements.IsSequence() || placements.size() == 0) {
    y::fail(doc, placements, "placements",
            "expected a non-empty list of placements, e.g. - {strategy: load_balanced}");
  }
  std::vector<ExperimentPlacement> out;
  for (size_t i = 0; i < placements.size(); ++i) {
    const std::string key = fmt::format("placements[{}]", i);
    if (!placements[i].IsMap()) {
      y::fail(doc, placements[i], key, "expected a mapping with at least 'strategy'");
    }
    ExperimentPlacement p;
    p.strategy = parse_strategy(doc, placements[i], key);
    p.name =
        y::value_or<std::string>(doc, placements[i], "name", p.strategy.label(), key + ".name");
    out.push_back(std::move(p));
  }
  return out;
}

// workloads: a non-empty list of uniquely named generated or replayed routings, each also kept as
// one line of flow YAML for the run command lines.
std::vector<ExperimentWorkload> parse_workloads(const y::Doc& doc) {
  const YAML::Node workloads = doc.root["workloads"];
  if (!workloads.IsDefined()) y::fail(doc, doc.root, "workloads", "missing required key");
  if (!workloads.IsSequence() || workloads.size() == 0) {
    y::fail(doc, workloads, "workloads",
            "expected a non-empty list of workloads, e.g. - {name: zipf, routing: {kind: zipf}}");
  }
  std::vector<ExperimentWorkload> out;
  std::set<std::string> names;
  for (size_t i = 0; i < workloads.size(); ++i) {
    const std::string key = fmt::format("workloads[{}]", i);
    const YAML::Node w = workloads[i];
    if (!w.IsMap()) y::fail(doc, w, key, "expected a mapping with 'name' and 'routing'");
    y::reject_unknown_keys(doc, w, {"name", "routing"}, key);
    ExperimentWorkload wl;
    wl.name = y::require<std::string>(doc, w, "name", key + ".name");
    if (!names.insert(wl.name).second) {
      y::fail(doc, w["name"], key + ".name", fmt::format("workload '{}' is named twice", wl.name));
    }
    const YAML::Node r = w["routing"];
    if (!r.IsDefined() || r.IsNull()) y::fail(doc, w, key + ".routing", "missing required key");
    wl.routing = parse_routing_spec(doc, r, key + ".routing");
    if (wl.routing.is_router()) {
      y::fail(doc, r, key + ".routing",
              "kind 'router' needs the model's forward; experiments generate routing (uniform, "
              "zipf, hotset, drift, topics) or replay a trace (kind: replay)");
    }
    wl.routing_yaml = flow_yaml(r);
    if (wl.routing_yaml.find('\'') != std::string::npos) {
      y::fail(doc, r, key + ".routing",
              "must not contain a single quote (it goes on a command line)");
    }
    out.push_back(std::move(wl));
  }
  return out;
}

// The scalar keys (tokens, tokens_per_step, layers, timeout_s, launcher) and set: into `c`.
void parse_settings(const y::Doc& doc, ExperimentConfig& c) {
  const YAML::Node& root = doc.root;
  auto positive = [&](const char* k, int64_t fallback, int64_t lo) {
    const int64_t v = y::value_or<int64_t>(doc, root, k, fallback);
    if (v < lo) y::fail(doc, root[k], k, fmt::format("expected an integer >= {}, got {}", lo, v));
    return v;
  };
  c.tokens = positive("tokens", c.tokens, 1);
  c.tokens_per_step = positive("tokens_per_step", 0, 0);
  c.max_layers = positive("layers", 0, 0);
  c.timeout_s = positive("timeout_s", c.timeout_s, 1);
  c.launcher = y::value_or<std::string>(doc, root, "launcher", c.launcher);
  if (c.launcher.find("{ranks}") == std::string::npos) {
    y::fail(doc, root["launcher"], "launcher",
            "must contain {ranks} (e.g. \"srun -n {ranks}\"), where the rank count goes");
  }
  if (const YAML::Node s = root["set"]; s.IsDefined() && !s.IsNull()) {
    if (!s.IsSequence()) y::fail(doc, s, "set", "expected a list of key=value overrides");
    for (size_t i = 0; i < s.size(); ++i) {
      const std::string v = y::as<std::string>(doc, s[i], fmt::format("set[{}]", i));
      if (v.find('=') == std::string::npos || v.find('\'') != std::string::npos) {
        y::fail(doc, s[i], fmt::format("set[{}]", i), "expected key=value without single quotes");
      }
      c.sets.push_back(v);
    }
  }
}

// hostfile (mode run): read and checked now, so that a bad file or a rank count that would split
// a node fails before any cell runs; the launcher takes its path at {hostfile}.
void check_hostfile(const y::Doc& doc, const std::string& path, ExperimentConfig& c) {
  const YAML::Node& root = doc.root;
  const bool has_placeholder = c.launcher.find("{hostfile}") != std::string::npos;
  if (!root["hostfile"].IsDefined()) {
    if (has_placeholder) {
      y::fail(doc, root["launcher"], "launcher", "uses {hostfile} but the file sets no hostfile");
    }
    return;
  }
  if (c.mode != "run") y::fail(doc, root["hostfile"], "hostfile", "only mode 'run' launches jobs");
  if (!has_placeholder) {
    y::fail(doc, root["launcher"].IsDefined() ? root["launcher"] : root, "launcher",
            "must contain {hostfile} when hostfile is set (e.g. \"mpirun --hostfile {hostfile} "
            "-np {ranks}\")");
  }
  c.hostfile = resolve(path, y::require<std::string>(doc, root, "hostfile"));
  const Hostfile hosts = load_hostfile(c.hostfile);
  for (int n : c.ranks) hosts.check_ranks(n, fmt::format("{}: ranks {}", c.source, n));
}

// The keys only one mode takes: run needs an existing run_config and places every layer.
void check_mode_keys(const y::Doc& doc, const std::string& path, ExperimentConfig& c) {
  const YAML::Node& root = doc.root;
  if (c.mode == "run" && root["layers"].IsDefined()) {
    y::fail(doc, root["layers"], "layers", "mode 'run' places every MoE layer; drop this key");
  }
  if (c.mode == "run") {
    c.run_config = resolve(path, y::require<std::string>(doc, root, "run_config"));
    std::error_code ec;
    if (!fs::exists(c.run_config, ec)) {
      y::fail(doc, root["run_config"], "run_config", fmt::format("no such file: {}", c.run_config));
    }
  } else if (root["run_config"].IsDefined()) {
    y::fail(doc, root["run_config"], "run_config", "only mode 'run' reads a run config");
  }
  check_hostfile(doc, path, c);
}

// The model's MoE layers, the first `max_layers` of them (0: all).
std::vector<int64_t> experiment_layers(const ModelConfig& model, int64_t max_layers) {
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) {
    if (model.layer_is_moe(l) &&
        (max_layers == 0 || static_cast<int64_t>(layers.size()) < max_layers)) {
      layers.push_back(l);
    }
  }
  return layers;
}

// Mode run: writes the fitted placement, runs `moe-ep run` with it through the launcher and reads
// back what it measured into `cell`.
void run_cell(const ExperimentConfig& c, const ExperimentWorkload& w, const ExperimentPlacement& p,
              int n, const std::vector<std::pair<int, parallel::RankLists>>& lists,
              const ModelConfig& model, const std::string& out_dir, const std::string& exe,
              ExperimentCell& cell) {
  const std::string stem = file_label(fmt::format("{}_{}r_{}", w.name, n, p.name));
  const std::string yaml = (fs::path(out_dir) / "placements" / (stem + ".yaml")).string();
  parallel::write_placement_yaml(yaml, n, lists,
                                 {fmt::format("experiment {}: {} fitted on {} tokens of {}", c.name,
                                              p.name, c.tokens, cell.routing)});
  const std::string json = (fs::path(out_dir) / "runs" / (stem + ".json")).string();
  const std::string log = (fs::path(out_dir) / "runs" / (stem + ".log")).string();
  std::string cmd = fmt::format(
      "timeout -k 10 {} {} {} run --config {} --quiet "
      "--placement {} --json {} --set 'workload.routing={}'",
      c.timeout_s,
      replace_all(replace_all(c.launcher, "{ranks}", std::to_string(n)), "{hostfile}", c.hostfile),
      exe, c.run_config, yaml, json, w.routing_yaml);
  for (const std::string& s : c.sets) cmd += fmt::format(" --set '{}'", s);
  cmd += fmt::format(" >{} 2>&1 </dev/null", log);
  const int rc = shell(cmd);
  MOE_CHECK_AS("experiment", rc == 0,
               "{}: cell {} on {} ranks with {} failed (exit {}); its output is in {}", c.source,
               w.name, n, p.name, rc, log);
  std::ifstream in(json);
  MOE_CHECK_AS("experiment", static_cast<bool>(in), "{}: the run wrote no JSON {}", c.source, json);
  const nlohmann::json j = nlohmann::json::parse(in);
  const nlohmann::json& m = j.at("metrics");
  cell.measured = report_from_run(m, n, model.num_experts_per_tok);
  cell.phases = m.value("phases", nlohmann::json::object());
}

std::string progress_line(const ExperimentCell& e, size_t done, size_t total) {
  return fmt::format(
      "[{}/{}] {} · {} ranks · {}: balancedness {:.4f}{} · cross-rank rows/token {:.3f} · "
      "{:.2f} s{}",
      done, total, e.workload, e.ranks, e.placement, e.measured.mean_balancedness,
      e.fit ? fmt::format(" (fitted {:.4f})", e.fit->mean_balancedness) : std::string(),
      e.measured.cross_rank_rows_per_token(), e.seconds,
      e.fit ? fmt::format(" (held-out replay {:.3f} s)", e.analyze_seconds) : std::string());
}

}  // namespace

ExperimentConfig load_experiment_config(const std::string& path) {
  y::Doc doc = y::load(path);
  const YAML::Node& root = doc.root;
  y::reject_unknown_keys(
      doc, root,
      {"name", "mode", "model", "ranks", "placements", "workloads", "tokens", "tokens_per_step",
       "layers", "run_config", "launcher", "hostfile", "set", "timeout_s"});
  ExperimentConfig c;
  c.source = path;
  c.name = y::value_or<std::string>(doc, root, "name", fs::path(path).stem().string());
  c.mode = y::value_or<std::string>(doc, root, "mode", "analyze");
  if (c.mode != "analyze" && c.mode != "run") {
    y::fail(doc, root["mode"], "mode",
            fmt::format("expected 'analyze' or 'run', got '{}'", c.mode));
  }
  c.model = resolve(path, y::require<std::string>(doc, root, "model"));
  c.ranks = parse_ranks(doc);
  c.placements = parse_placements(doc);
  c.workloads = parse_workloads(doc);
  parse_settings(doc, c);
  check_mode_keys(doc, path, c);
  return c;
}

ExperimentResults run_experiment(const ExperimentConfig& c, const std::string& out_dir,
                                 const std::string& exe,
                                 const std::function<void(const std::string&)>& progress) {
  const ModelConfig model = load_model_config(c.model);
  const std::vector<int64_t> layers = experiment_layers(model, c.max_layers);
  MOE_CHECK_AS("config", !layers.empty(), "{}: model {} has no MoE layer", c.source, c.model);
  AnalysisOptions opt;
  opt.hidden = model.hidden_size;
  opt.tokens_per_step = c.tokens_per_step;
  fs::create_directories(fs::path(out_dir) / "placements");
  if (c.mode == "run") fs::create_directories(fs::path(out_dir) / "runs");

  ExperimentResults res;
  res.config = c;
  const size_t total = c.workloads.size() * c.ranks.size() * c.placements.size();
  for (const ExperimentWorkload& w : c.workloads) {
    const auto routing = make_routing(w.routing, model);
    // Fit sample, then the held-out sample right after it (same distribution, later tokens).
    const RoutingTrace all = generate_trace(*routing, layers, 2 * c.tokens, c.tokens_per_step);
    const RoutingTrace fit = rows_of(all, 0, c.tokens);
    const RoutingTrace held = rows_of(all, c.tokens, c.tokens);
    for (int n : c.ranks) {
      for (const ExperimentPlacement& p : c.placements) {
        const auto t0 = std::chrono::steady_clock::now();
        ExperimentCell cell;
        cell.workload = w.name;
        cell.routing = w.routing.describe();
        cell.placement = p.name;
        cell.strategy = p.strategy.name;
        cell.ranks = n;
        if (w.routing.kind == "zipf" || w.routing.kind == "drift") cell.skew = w.routing.s;
        const auto lists = fit_placement(fit, p.strategy, n);
        const parallel::Placement placement = placement_from_lists(lists, fit, n, p.name);
        if (c.mode == "analyze") {
          opt.ranks_per_node = p.strategy.ranks_per_node;
          cell.fit = analyze_placement(fit, placement, opt);
          const auto a0 = std::chrono::steady_clock::now();
          cell.measured = analyze_placement(held, placement, opt);
          cell.analyze_seconds =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - a0).count();
        } else {
          run_cell(c, w, p, n, lists, model, out_dir, exe, cell);
        }
        cell.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        res.cells.push_back(std::move(cell));
        progress(progress_line(res.cells.back(), res.cells.size(), total));
      }
    }
  }
  return res;
}

nlohmann::json ExperimentResults::to_json() const {
  nlohmann::json cells_json = nlohmann::json::array();
  for (const ExperimentCell& c : cells) {
    nlohmann::json j = {{"workload", c.workload},
                        {"routing", c.routing},
                        {"placement", c.placement},
                        {"strategy", c.strategy},
                        {"ranks", c.ranks},
                        {"skew", c.skew ? nlohmann::json(*c.skew) : nlohmann::json(nullptr)},
                        {"measured", c.measured.to_json(false)},
                        {"dedup_saved", dedup_saved(c.measured.traffic)},
                        {"seconds", c.seconds},
                        {"analyze_seconds", c.analyze_seconds}};
    if (c.fit) j["fit"] = c.fit->to_json(false);
    if (!c.phases.empty()) j["phases"] = c.phases;
    cells_json.push_back(std::move(j));
  }
  return {{"name", config.name},           {"mode", config.mode},
          {"config", config.source},       {"model", config.model},
          {"tokens", config.tokens},       {"tokens_per_step", config.tokens_per_step},
          {"cells", std::move(cells_json)}};
}

namespace {

std::vector<std::string> phase_names(const std::vector<ExperimentCell>& cells) {
  std::vector<std::string> names;
  for (const ExperimentCell& c : cells) {
    for (auto it = c.phases.begin(); it != c.phases.end(); ++it) {
      if (std::find(names.begin(), names.end(), it.key()) == names.end()) names.push_back(it.key());
    }
  }
  return names;
}

double phase_value(const ExperimentCell& c, const std::string& name, const char* which) {
  if (!c.phases.contains(name)) return 0.0;
  return c.phases[name].value(which, 0.0);
}

}  // namespace

std::string ExperimentResults::markdown() const {
  const bool analyze = config.mode == "analyze";
  const std::vector<std::string> phases = phase_names(cells);
  std::string s = fmt::format("# Experiment {}\n\n", config.name);
  s +=
      fmt::format("Mode `{}`, model `{}`, config `{}`. ", config.mode, config.model, config.source);
  if (analyze) {
    s += fmt::format(
        "Placements fitted on {} generated tokens per workload and measured on the next {} "
        "(held out), as the runtime routes them (replica split, once-per-rank dedup); token row "
        "i on rank i mod N{}. Balancedness = mean / max (token, expert) pairs per rank, mean "
        "over MoE layers; rows/token = cross-rank rows per token and MoE layer.\n\n",
        config.tokens, config.tokens,
        config.tokens_per_step > 0 ? fmt::format(", {} rows per dispatch", config.tokens_per_step)
                                   : std::string());
  } else {
    s += "Each cell is one `moe-ep run`; figures are its --json (phase times: max / mean over "
         "ranks, seconds).\n\n";
  }
  s += "| workload | ranks | placement | balancedness |";
  if (analyze) s += " fitted |";
  s += " min | max-vio | cross-rank rows/token | without dedup | cross-rank GB | local GB | dedup "
       "saved |";
  for (const auto& p : phases) s += fmt::format(" {} max / mean s |", p);
  s += "\n|---|---:|---|---:|";
  if (analyze) s += "---:|";
  s += "---:|---:|---:|---:|---:|---:|---:|";
  for (size_t i = 0; i < phases.size(); ++i) s += "---:|";
  s += "\n";
  for (const ExperimentCell& c : cells) {
    const PlacementReport& m = c.measured;
    s += fmt::format("| {} | {} | {} | {:.4f} |", c.workload, c.ranks, c.placement,
                     m.mean_balancedness);
    if (analyze) s += fmt::format(" {:.4f} |", c.fit ? c.fit->mean_balancedness : 0.0);
    s += fmt::format(" {:.4f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.1f}% |",
                     m.min_balancedness, m.mean_max_vio, m.cross_rank_rows_per_token(),
                     m.cross_rank_pairs_per_token(), gb(m.traffic.bytes_sent_remote),
                     gb(m.traffic.bytes_kept_local), 100 * dedup_saved(m.traffic));
    for (const auto& p : phases) {
      s += fmt::format(" {:.4f} / {:.4f} |", phase_value(c, p, "max_s"),
                       phase_value(c, p, "mean_s"));
    }
    s += "\n";
  }
  return s;
}

std::string ExperimentResults::csv() const {
  const std::vector<std::string> phases = phase_names(cells);
  std::string s =
      "workload,routing,skew,ranks,placement,strategy,balancedness,fitted_balancedness,"
      "min_balancedness,mean_max_vio,cross_rank_rows_per_token,cross_rank_pairs_per_token,"
      "bytes_sent_remote,bytes_kept_local,bytes_remote_without_dedup,dedup_saved,seconds,"
      "ranks_per_node,inter_node_rows_per_token_flat,inter_node_rows_per_token_node_first";
  for (const auto& p : phases) s += fmt::format(",{0}_max_s,{0}_mean_s", p);
  s += "\n";
  for (const ExperimentCell& c : cells) {
    const PlacementReport& m = c.measured;
    s += fmt::format(
        "{},\"{}\",{},{},{},{},{:.6f},{},{:.6f},{:.6f},{:.6f},{:.6f},{},{},{},{:.6f},"
        "{:.3f},{},{:.6f},{:.6f}",
        c.workload, c.routing, c.skew ? fmt::format("{:g}", *c.skew) : "", c.ranks, c.placement,
        c.strategy, m.mean_balancedness,
        c.fit ? fmt::format("{:.6f}", c.fit->mean_balancedness) : "", m.min_balancedness,
        m.mean_max_vio, m.cross_rank_rows_per_token(), m.cross_rank_pairs_per_token(),
        m.traffic.bytes_sent_remote, m.traffic.bytes_kept_local,
        m.traffic.bytes_remote_without_dedup, dedup_saved(m.traffic), c.seconds,
        m.nodes.ranks_per_node > 0 ? m.nodes.ranks_per_node : c.ranks,
        m.inter_node_rows_per_token(false), m.inter_node_rows_per_token(true));
    for (const auto& p : phases) {
      s += fmt::format(",{:.6f},{:.6f}", phase_value(c, p, "max_s"), phase_value(c, p, "mean_s"));
    }
    s += "\n";
  }
  return s;
}

void write_experiment_results(const ExperimentResults& r, const std::string& out_dir) {
  fs::create_directories(out_dir);
  auto write = [&](const char* name, const std::string& text) {
    const std::string path = (fs::path(out_dir) / name).string();
    std::ofstream f(path);
    f << text;
    MOE_CHECK_AS("io", static_cast<bool>(f), "{}: cannot write", path);
  };
  write("results.md", r.markdown());
  write("results.csv", r.csv());
  write("results.json", r.to_json().dump(2) + "\n");
}

}  // namespace moe::runtime
