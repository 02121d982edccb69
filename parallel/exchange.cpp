// ByteExchange (exchange.h): started exchanges of backend memory, staged through host memory when
// the communicator cannot move the backend's memory.
#include "parallel/exchange.h"

#include "kernels/common/check.h"

namespace moe::parallel {

void ByteExchange::start_blocks(Communicator& comm, kernels::Backend& backend,
                                const unsigned char* send, const int64_t* send_bytes,
                                unsigned char* recv, int64_t block_bytes) {
  MOE_CHECK_AS("dispatch", comm_ == nullptr, "an exchange is already in flight");
  comm_ = &comm;
  backend_ = &backend;
  recv_size_ = 0;
  if (moves_backend_memory(comm, backend)) {
    id_ = comm.start_all_to_all_blocks(send, send_bytes, recv, block_bytes);
    return;
  }
  const size_t total = static_cast<size_t>(block_bytes) * static_cast<size_t>(comm.size());
  host_send_.resize(total);
  host_recv_.resize(total);
  for (int d = 0; d < comm.size(); ++d) {
    const size_t at = static_cast<size_t>(d) * static_cast<size_t>(block_bytes);
    const int64_t used = send_bytes != nullptr ? send_bytes[d] : block_bytes;
    if (used > 0) backend.download(host_send_.data() + at, send + at, static_cast<size_t>(used));
  }
  recv_ = recv;
  recv_size_ = total;
  id_ = comm.start_all_to_all_blocks(host_send_.data(), send_bytes, host_recv_.data(), block_bytes);
}

void ByteExchange::start_v(Communicator& comm, kernels::Backend& backend, const unsigned char* send,
                           std::span<const int64_t> send_bytes, unsigned char* recv,
                           std::span<const int64_t> recv_bytes) {
  MOE_CHECK_AS("dispatch", comm_ == nullptr, "an exchange is already in flight");
  comm_ = &comm;
  backend_ = &backend;
  recv_size_ = 0;
  size_t send_total = 0, recv_total = 0;
  for (int64_t b : send_bytes) send_total += static_cast<size_t>(b);
  for (int64_t b : recv_bytes) recv_total += static_cast<size_t>(b);
  if (moves_backend_memory(comm, backend)) {
    id_ = comm.start_all_to_all_v<unsigned char>({send, send_total}, send_bytes, {recv, recv_total},
                                                 recv_bytes);
    return;
  }
  host_send_.resize(send_total);
  host_recv_.resize(recv_total);
  if (send_total > 0) backend.download(host_send_.data(), send, send_total);
  recv_ = recv;
  recv_size_ = recv_total;
  id_ = comm.start_all_to_all_v<unsigned char>({host_send_.data(), send_total}, send_bytes,
                                               {host_recv_.data(), recv_total}, recv_bytes);
}

void ByteExchange::wait() {
  if (comm_ == nullptr) return;
  Communicator* comm = comm_;
  comm_ = nullptr;
  comm->wait(id_);
  if (recv_size_ > 0) backend_->upload(recv_, host_recv_.data(), recv_size_);
}

}  // namespace moe::parallel
