#pragma once
// Argument checking and layout logic of the range_search op, shared by every backend.
#include <ATen/core/Tensor.h>

#include <optional>

#include "pyquant/calib_math.h"

namespace pyquant::ops {

// Validated arguments of range_search.
struct RangeSearchArgs {
  int64_t channels;  // 1 for per-tensor
  ErrorNorm norm;
  float p;
};

// Raises ValueError / TypeError naming the argument: x float32/float16/bfloat16 and not empty;
// quant_min < quant_max within 16-bit grids (quant_max > 0 when symmetric); axis in range;
// num_candidates in [1, 100000]; p > 0 (inf allowed).
RangeSearchArgs check_range_search_args(const at::Tensor& x, int64_t quant_min, int64_t quant_max,
                                        std::optional<int64_t> axis, bool symmetric, int64_t num_candidates,
                                        double p);

// x as a contiguous float32 matrix [channels, elements per channel] (copies unless x already is one).
at::Tensor channel_rows(const at::Tensor& x, std::optional<int64_t> axis);

// Raises ValueError when min/max statistics (one per channel) are not finite, i.e. x holds NaN or Inf.
void check_finite_stats(const char* op, const at::Tensor& mins, const at::Tensor& maxs);

}  // namespace pyquant::ops
