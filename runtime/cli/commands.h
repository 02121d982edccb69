// The moe-ep commands. Each command file adds its subcommand (options, help) to the app and
// returns what to run when it is chosen; cli.cpp parses once and runs the chosen one. Rank 0
// alone prints and writes files; every rank runs the command (model commands are collective).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace moe::runtime {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;  // exit code
};

Command add_plan_command(CLI::App& app, int world_rank);
Command add_forward_command(CLI::App& app);
Command add_generate_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_place_command(CLI::App& app, int world_rank);
Command add_experiment_command(CLI::App& app, int world_rank);
Command add_predict_command(CLI::App& app, int world_rank);
Command add_calibrate_command(CLI::App& app);
Command add_serve_command(CLI::App& app);
Command add_tokenize_command(CLI::App& app, int world_rank);
Command add_detokenize_command(CLI::App& app, int world_rank);

}  // namespace moe::runtime
