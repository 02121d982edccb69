// The moe-ep app: registers every command (commands.h), parses once, runs the chosen one.
#include "runtime/cli/cli.h"

#include <CLI/CLI.hpp>
#include <vector>

#include "runtime/cli/commands.h"

namespace moe::runtime {

int run_cli(int argc, char** argv, int world_rank) {
  CLI::App app{
      "moe-ep: run Mixture-of-Experts transformers (Qwen3-MoE) across ranks with expert "
      "parallelism.\nEvery rank holds the dense part and a shard of the experts; tokens travel to "
      "their experts by all-to-all.\nMulti-rank: mpirun -np N moe-ep <command> ... (or "
      "launch/moe-ep-mpi N <command> ...); rank 0 prints and writes files."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every command");
  const std::vector<Command> commands = {add_plan_command(app, world_rank),
                                         add_forward_command(app),
                                         add_generate_command(app),
                                         add_run_command(app),
                                         add_place_command(app, world_rank),
                                         add_experiment_command(app, world_rank),
                                         add_tokenize_command(app, world_rank),
                                         add_detokenize_command(app, world_rank),
                                         add_predict_command(app, world_rank),
                                         add_calibrate_command(app),
                                         add_serve_command(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return world_rank == 0 ? app.exit(e) : 0;
  } catch (const CLI::CallForAllHelp& e) {
    return world_rank == 0 ? app.exit(e) : 0;
  } catch (const CLI::ParseError& e) {
    if (world_rank == 0) app.exit(e);
    return 2;
  }
  for (const Command& c : commands) {
    if (c.app->parsed()) return c.run();
  }
  return 2;
}

}  // namespace moe::runtime
