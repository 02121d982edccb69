// The moe-ep command line: plan | forward | generate | run | experiment. Parses arguments,
// builds the model/engine for this rank and runs the command. Throws moe::Error; launch/main
// catches it and ends the job.
#pragma once

namespace moe::runtime {

// Returns the process exit code (0 ok, 1 bad input handled as an error, 2 usage error).
int run_cli(int argc, char** argv);

}  // namespace moe::runtime
