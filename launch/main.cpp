// moe-ep entry point: starts MPI, runs the CLI, and turns any error on any rank into one printed
// line and the end of the whole job (MPI_Abort), so no rank is ever left waiting.
#include <fmt/format.h>

#include <cstdio>
#include <exception>

#include "kernels/common/check.h"
#include "parallel/communicator.h"
#include "runtime/cli/cli.h"

int main(int argc, char** argv) {
  moe::parallel::MpiSession mpi(&argc, &argv);
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
