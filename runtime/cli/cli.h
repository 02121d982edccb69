// moe-ep command line: parses the arguments (identically on every rank) and runs the chosen
// command. Usage errors return 2 (printed by rank 0); input errors throw moe::Error, caught in
// launch/main.
#pragma once

namespace moe::runtime {

// `world_rank`: this process's rank (MPI is initialised by main before this call).
int run_cli(int argc, char** argv, int world_rank);

}  // namespace moe::runtime
