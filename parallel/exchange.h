// Moving backend memory between ranks, whichever memory the communicator moves: straight through
// the communicator when it moves the backend's memory (NCCL, or a host backend with MPI), else
// staged through host memory (a device backend with MPI). The one staging rule the dispatcher's
// messages and the expert-weight moves share.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "parallel/communicator.h"

namespace moe::parallel {

// True when the communicator moves the backend's memory itself.
inline bool moves_backend_memory(const Communicator& comm, const kernels::Backend& backend) {
  return comm.device_buffers() || backend.is_host_memory();
}

// One started byte exchange of backend memory (fixed blocks or all_to_all_v), completed by
// wait(); reusable (staging buffers grow, never shrink).
class ByteExchange {
 public:
  // Communicator::start_all_to_all_blocks on backend memory (send and recv: size() blocks).
  void start_blocks(Communicator& comm, kernels::Backend& backend, const unsigned char* send,
                    const int64_t* send_bytes, unsigned char* recv, int64_t block_bytes);
  // Communicator::start_all_to_all_v of bytes on backend memory.
  void start_v(Communicator& comm, kernels::Backend& backend, const unsigned char* send,
               std::span<const int64_t> send_bytes, unsigned char* recv,
               std::span<const int64_t> recv_bytes);
  // Completes the exchange (a staged one uploads what it received). No-op when none is started.
  void wait();
  bool started() const { return comm_ != nullptr; }

 private:
  Communicator* comm_ = nullptr;
  kernels::Backend* backend_ = nullptr;
  ExchangeId id_ = -1;
  unsigned char* recv_ = nullptr;  // backend memory a staged exchange uploads to
  size_t recv_size_ = 0;           // 0: not staged
  std::vector<unsigned char> host_send_, host_recv_;
};

// Reusable staging of exchange_rows.
template <class T>
struct ExchangeScratch {
  std::vector<int64_t> send_elems, recv_elems;
  std::vector<T> host_send, host_recv;
};

// Moves rows of `width` elements of T between ranks (all_to_all_v; counts in rows), from and to
// backend memory, staged as moves_backend_memory() says.
template <class T>
void exchange_rows(Communicator& comm, kernels::Backend& backend, int64_t width, const T* send,
                   std::span<const int64_t> send_rows, T* recv, std::span<const int64_t> recv_rows,
                   ExchangeScratch<T>& scratch) {
  const int n = comm.size();
  scratch.send_elems.resize(n);
  scratch.recv_elems.resize(n);
  size_t send_size = 0, recv_size = 0;
  for (int r = 0; r < n; ++r) {
    scratch.send_elems[r] = send_rows[r] * width;
    scratch.recv_elems[r] = recv_rows[r] * width;
    send_size += static_cast<size_t>(scratch.send_elems[r]);
    recv_size += static_cast<size_t>(scratch.recv_elems[r]);
  }
  if (moves_backend_memory(comm, backend)) {
    comm.all_to_all_v<T>({send, send_size}, scratch.send_elems, {recv, recv_size},
                         scratch.recv_elems);
    return;
  }
  scratch.host_send.resize(send_size);
  scratch.host_recv.resize(recv_size);
  if (send_size > 0) backend.download(scratch.host_send.data(), send, send_size * sizeof(T));
  comm.all_to_all_v<T>(scratch.host_send, scratch.send_elems, scratch.host_recv,
                       scratch.recv_elems);
  if (recv_size > 0) backend.upload(recv, scratch.host_recv.data(), recv_size * sizeof(T));
}

}  // namespace moe::parallel
