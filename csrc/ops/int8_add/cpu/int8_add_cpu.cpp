// CPU implementation of int8_add: at::parallel_for over the elements, the per-variant kernel of
// int8_add_kernel.cpp on each chunk.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../int8_add.h"
#include "int8_add_kernel.h"

namespace pyquant::ops {
namespace {

at::Tensor int8_add_cpu(const at::Tensor& a_q, double a_scale, int64_t a_zero_point, const at::Tensor& b_q,
                        double b_scale, int64_t b_zero_point, double out_scale, int64_t out_zero_point,
                        int64_t quant_min, int64_t quant_max) {
  const Int8AddCall c = check_int8_add(a_q, a_scale, a_zero_point, b_q, b_scale, b_zero_point, out_scale,
                                       out_zero_point, quant_min, quant_max);
  at::Tensor out = at::empty_like(c.a);
  const int64_t n = c.a.numel();
  if (n == 0) return out;
  const auto& kernels = PYQ_SELECT_ISA_TABLE(int8_add_kernels);
  const uint8_t* a = c.a.const_data_ptr<uint8_t>();
  const uint8_t* b = c.b.const_data_ptr<uint8_t>();
  uint8_t* o = out.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) { kernels.add(a, b, o, begin, end, c.params); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CPU, m) {
  m.impl("int8_add", &int8_add_cpu);
}

}  // namespace pyquant::ops
