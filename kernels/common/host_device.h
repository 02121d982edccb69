// MOE_HD marks a function the CUDA kernels and their CPU emulations share: __host__ __device__
// (force-inlined) under nvcc, plain inline in the host compiler. The per-thread bodies of the
// device kernels are written once with it, so tests on a machine without a GPU run the same code.
#pragma once

#if defined(__CUDACC__)
#define MOE_HD __host__ __device__ __forceinline__
#else
#define MOE_HD inline
#endif
