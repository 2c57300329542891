#pragma once
// Qualifiers for math shared between the CPU kernels and the CUDA kernels: the CPU tests
// verify exactly the arithmetic the GPU runs.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYQ_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYQ_HOST_DEVICE inline
#endif
