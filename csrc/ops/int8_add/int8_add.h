#pragma once
// int8_add: requantizing add of two uint8 code tensors (the residual add of a converted int8 network).
// Argument checks shared by the CPU and CUDA implementations; the per-element math is
// pyquant/requantize.h (int8_add_code).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

#include "pyquant/requantize.h"

namespace pyquant::ops {

// Validates the call; returns the parameters and the two inputs in one common memory layout (a's,
// dense), so the kernels run over raw memory.
struct Int8AddCall {
  Int8AddParams params;
  at::Tensor a, b;
};
Int8AddCall check_int8_add(const at::Tensor& a_q, double a_scale, int64_t a_zero_point, const at::Tensor& b_q,
                           double b_scale, int64_t b_zero_point, double out_scale, int64_t out_zero_point,
                           int64_t quant_min, int64_t quant_max);

}  // namespace pyquant::ops
