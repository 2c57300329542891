#pragma once
// Argument checking of the squant_round op, shared by every backend.
#include <ATen/core/Tensor.h>

namespace pyquant::ops {

struct SquantShape {
  int64_t out_channels;  // O
  int64_t kernels;       // I (kernels per output channel)
  int64_t kernel_size;   // K = prod(kernel dims), 1 for [O, I]
};

// Raises ValueError / TypeError naming the argument: x float32 or float64, at least 2 dimensions
// [O, I, ...], not empty, finite; quant_min < quant_max, both within +-2^24.
SquantShape check_squant_args(const at::Tensor& x, int64_t quant_min, int64_t quant_max);

}  // namespace pyquant::ops
