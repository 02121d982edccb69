// This process's own device memory as the driver accounts it (NVML's per-process usage, read
// through dlopen so nothing links NVML), for tests that bound what the process grows by: the
// whole-device figure of cudaMemGetInfo moves with every other process on a shared GPU.
// Returns -1 when NVML is missing or cannot see this process (e.g. a container's PID namespace).
#pragma once

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

namespace moe::kernels::test {

inline int64_t process_gpu_bytes(int cuda_device) {
  // NVML's own types (nvml.h is not in every toolkit): nvmlProcessInfo_v2_t, the layout of
  // nvmlDeviceGetComputeRunningProcesses_v3.
  struct ProcessInfo {
    unsigned int pid;
    unsigned long long used_bytes;
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
  };
  using Init = int (*)();
  using ByBusId = int (*)(const char*, void**);
  using Processes = int (*)(void*, unsigned int*, ProcessInfo*);
  static void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return -1;
  static const bool initialised = [] {
    auto init = reinterpret_cast<Init>(dlsym(lib, "nvmlInit_v2"));
    return init != nullptr && init() == 0;
  }();
  auto by_bus = reinterpret_cast<ByBusId>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
  auto processes =
      reinterpret_cast<Processes>(dlsym(lib, "nvmlDeviceGetComputeRunningProcesses_v3"));
  if (!initialised || by_bus == nullptr || processes == nullptr) return -1;
  char bus_id[32] = {};
  if (cudaDeviceGetPCIBusId(bus_id, sizeof bus_id, cuda_device) != cudaSuccess) return -1;
  void* handle = nullptr;
  if (by_bus(bus_id, &handle) != 0) return -1;
  std::vector<ProcessInfo> infos(256);
  unsigned int count = static_cast<unsigned int>(infos.size());
  if (processes(handle, &count, infos.data()) != 0) return -1;
  const unsigned int me = static_cast<unsigned int>(getpid());
  for (unsigned int i = 0; i < count; ++i) {
    // NVML_VALUE_NOT_AVAILABLE (all ones) when the driver does not account per process.
    if (infos[i].pid == me && infos[i].used_bytes != ~0ull) {
      return static_cast<int64_t>(infos[i].used_bytes);
    }
  }
  return -1;
}

}  // namespace moe::kernels::test
