// moe-ep entry point: starts MPI when an MPI or Slurm launcher started this process (a process
// started alone is the whole job: one rank, no MPI start-up), runs the CLI, and turns any error on
// any rank into one printed line and the end of the whole job (MPI_Abort under MPI, exit code 1
// otherwise), so no rank is ever left waiting.
#include <fmt/format.h>

#include <cstdio>
#include <exception>

#include "kernels/common/check.h"
#include "parallel/communicator.h"
#include "runtime/cli/cli.h"

int main(int argc, char** argv) {
  moe::parallel::MpiSession mpi(&argc, &argv, moe::parallel::MpiStart::kWhenLaunched);
  moe::set_error_rank(mpi.world_rank());
  try {
    return moe::runtime::run_cli(argc, argv, mpi.world_rank());
  } catch (const moe::Error& e) {
    moe::parallel::MpiSession::abort_job(fmt::format("moe-ep: error: {}", e.what()), 1);
  } catch (const std::exception& e) {
    moe::parallel::MpiSession::abort_job(
        fmt::format("moe-ep: error: {} (rank {}, unexpected exception)", e.what(),
                    mpi.world_rank()),
        1);
  }
}
