// `moe-ep experiment`: placements x workloads x rank counts from an experiment YAML (README,
// "Placement experiments"); prints a progress line per cell, writes results.md/.csv/.json and
// draws the PNGs with bench/plot_experiment.py. Rank 0 does the work; no collectives.
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "kernels/common/check.h"
#include "runtime/analysis/experiment.h"
#include "runtime/cli/commands.h"
#include "runtime/cli/options.h"

namespace moe::runtime {
namespace {

namespace fs = std::filesystem;

struct ExperimentArgs {
  std::string config, out, python = "/usr/bin/python3", plot_script;
  bool no_plots = false;
};

// bench/plot_experiment.py in the first folder above the config file or the executable that has it.
std::string find_plot_script(const std::string& config, const std::string& exe) {
  for (fs::path start : {fs::absolute(config).parent_path(), fs::path(exe).parent_path()}) {
    for (fs::path p = start; !p.empty(); p = p.parent_path()) {
      std::error_code ec;
      if (fs::exists(p / "bench" / "plot_experiment.py", ec)) {
        return (p / "bench" / "plot_experiment.py").string();
      }
      if (p == p.parent_path()) break;
    }
  }
  return "";
}

std::string self_exe() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("moe-ep") : p.string();
}

int run_experiment_command(const ExperimentArgs& a, int rank) {
  if (rank != 0) return 0;
  const ExperimentConfig config = load_experiment_config(a.config);
  const std::string exe = self_exe();
  fmt::print("experiment {} ({}): {} workloads x {} rank counts x {} placements -> {}\n",
             config.name, config.mode, config.workloads.size(), config.ranks.size(),
             config.placements.size(), a.out);
  std::fflush(stdout);
  const ExperimentResults results = run_experiment(config, a.out, exe, [](const std::string& line) {
    fmt::print("{}\n", line);
    std::fflush(stdout);
  });
  write_experiment_results(results, a.out);
  fmt::print("wrote {0}/results.md, {0}/results.csv, {0}/results.json\n", a.out);
  if (a.no_plots) return 0;
  const std::string script =
      a.plot_script.empty() ? find_plot_script(a.config, exe) : a.plot_script;
  if (script.empty()) {
    fmt::print("plots: bench/plot_experiment.py not found; run it by hand on {}/results.json\n",
               a.out);
    return 0;
  }
  const std::string cmd =
      fmt::format("{} {} {}/results.json {} </dev/null", a.python, script, a.out, a.out);
  const int status = std::system(cmd.c_str());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fmt::print("plots: `{}` failed (needs matplotlib); the tables are written\n", cmd);
  }
  return 0;
}

}  // namespace

Command add_experiment_command(CLI::App& app, int world_rank) {
  auto a = std::make_shared<ExperimentArgs>();
  auto* cmd = app.add_subcommand(
      "experiment", "Placement experiments: placements x workloads x rank counts (analyze | run)");
  cmd->add_option("--config", a->config, "Experiment YAML (configs/experiments/)")->required();
  cmd->add_option("--out", a->out, "Output folder: results.md/.csv/.json and PNG plots")
      ->required();
  cmd->add_flag("--no-plots", a->no_plots, "Write the tables only");
  cmd->add_option("--python", a->python,
                  "Interpreter with matplotlib for the plots (default /usr/bin/python3)");
  cmd->add_option("--plot-script", a->plot_script,
                  "Plot script (default: bench/plot_experiment.py above the config)");
  return {cmd, [a, world_rank] { return run_experiment_command(*a, world_rank); }};
}

}  // namespace moe::runtime
