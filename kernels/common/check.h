// The one error type of moe-ep and the macros that throw it.
// Library code throws moe::Error (subsystem, file:line, rank); only launch/ catches it, prints
// one line and ends the whole job. The rank is a process-wide tag set once at start-up.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  Error(std::string subsystem, std::string message, const char* file, int line);
  const std::string& subsystem() const { return subsystem_; }
  const std::string& message() const { return message_; }
  const char* file() const { return file_; }
  int line() const { return line_; }
  int rank() const { return rank_; }

 private:
  std::string subsystem_;
  std::string message_;
  const char* file_;
  int line_;
  int rank_;
};

// Rank stamped into every Error thrown afterwards (-1 before MPI starts).
void set_error_rank(int rank);
int error_rank();

[[noreturn]] void throw_error(const char* subsystem, std::string message, const char* file,
                              int line);

}  // namespace moe

#define MOE_THROW(subsystem, ...) \
  ::moe::throw_error(subsystem, ::fmt::format(__VA_ARGS__), __FILE__, __LINE__)

#define MOE_CHECK(cond, ...)                      \
  do {                                            \
    if (!(cond)) MOE_THROW("check", __VA_ARGS__); \
  } while (0)

// Same as MOE_CHECK with a named subsystem ("config", "checkpoint", "placement", ...).
#define MOE_CHECK_AS(subsystem, cond, ...)          \
  do {                                              \
    if (!(cond)) MOE_THROW(subsystem, __VA_ARGS__); \
  } while (0)

// The following expand only where their API's header is included (MPI in parallel/, CUDA in
// kernels/cuda, NCCL in the NCCL communicator); check.h itself includes none of them.
#define MOE_MPI_CHECK(expr)                                                              \
  do {                                                                                   \
    int moe_mpi_rc_ = (expr);                                                            \
    if (moe_mpi_rc_ != MPI_SUCCESS) {                                                    \
      char moe_mpi_msg_[MPI_MAX_ERROR_STRING];                                           \
      int moe_mpi_len_ = 0;                                                              \
      MPI_Error_string(moe_mpi_rc_, moe_mpi_msg_, &moe_mpi_len_);                        \
      MOE_THROW("mpi", "{} failed: {}", #expr, std::string(moe_mpi_msg_, moe_mpi_len_)); \
    }                                                                                    \
  } while (0)

#define MOE_CUDA_CHECK(expr)                                                       \
  do {                                                                             \
    cudaError_t moe_cuda_rc_ = (expr);                                             \
    if (moe_cuda_rc_ != cudaSuccess)                                               \
      MOE_THROW("cuda", "{} failed: {}", #expr, cudaGetErrorString(moe_cuda_rc_)); \
  } while (0)

#define MOE_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                    \
    cublasStatus_t moe_cublas_rc_ = (expr);                                               \
    if (moe_cublas_rc_ != CUBLAS_STATUS_SUCCESS)                                          \
      MOE_THROW("cublas", "{} failed: {}", #expr, cublasGetStatusString(moe_cublas_rc_)); \
  } while (0)

#define MOE_NCCL_CHECK(expr)                                                       \
  do {                                                                             \
    ncclResult_t moe_nccl_rc_ = (expr);                                            \
    if (moe_nccl_rc_ != ncclSuccess && moe_nccl_rc_ != ncclInProgress)             \
      MOE_THROW("nccl", "{} failed: {}", #expr, ncclGetErrorString(moe_nccl_rc_)); \
  } while (0)
