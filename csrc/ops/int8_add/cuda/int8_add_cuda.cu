// CUDA kernel of int8_add: one thread per element, the shared int8_add_code of pyquant/requantize.h
// (the same function the CPU's DEFAULT variant runs, so the CPU tests check this arithmetic).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "../int8_add.h"

namespace pyquant::ops {
namespace {

constexpr int kThreads = 256;

__global__ void int8_add_kernel(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b,
                                uint8_t* __restrict__ out, int64_t n, Int8AddParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = int8_add_code(a[i], b[i], p);
}

at::Tensor int8_add_cuda(const at::Tensor& a_q, double a_scale, int64_t a_zero_point, const at::Tensor& b_q,
                         double b_scale, int64_t b_zero_point, double out_scale, int64_t out_zero_point,
                         int64_t quant_min, int64_t quant_max) {
  const Int8AddCall c = check_int8_add(a_q, a_scale, a_zero_point, b_q, b_scale, b_zero_point, out_scale,
                                       out_zero_point, quant_min, quant_max);
  const c10::cuda::CUDAGuard guard(c.a.device());
  at::Tensor out = at::empty_like(c.a);
  const int64_t n = c.a.numel();
  if (n == 0) return out;
  const auto blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  int8_add_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      c.a.const_data_ptr<uint8_t>(), c.b.const_data_ptr<uint8_t>(), out.mutable_data_ptr<uint8_t>(), n, c.params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CUDA, m) {
  m.impl("int8_add", &int8_add_cuda);
}

}  // namespace pyquant::ops
