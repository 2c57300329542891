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
// [O, I, ...], not empty; quant_min < quant_max, both within +-2^24. Finiteness is checked by the
// backends (the CPU kernel while it reads x, saving a pass) through check_squant_finite.
SquantShape check_squant_args(const at::Tensor& x, int64_t quant_min, int64_t quant_max);

// Raises the ValueError for NaN/Inf in x when !finite.
void check_squant_finite(bool finite);

}  // namespace pyquant::ops
