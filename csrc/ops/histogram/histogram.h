#pragma once
// Argument checking and range logic of the histogram op, shared by every backend.
#include <ATen/core/Tensor.h>

#include <optional>

namespace pyquant::ops {

struct HistogramArgs {
  int64_t channels;  // 1 for per-tensor
  bool per_channel;
};

// Raises ValueError / TypeError naming the argument: x float32/float16/bfloat16, not empty; bins in
// [1, 2^24]; lo and hi both given or both None, floating, finite, 1 or C values each, lo < hi;
// counts int64 of shape [bins] (per tensor) or [C, bins] (per channel), on x's device.
HistogramArgs check_histogram_args(const at::Tensor& x, int64_t bins, const std::optional<at::Tensor>& lo,
                                   const std::optional<at::Tensor>& hi, std::optional<int64_t> axis,
                                   const std::optional<at::Tensor>& counts);

// The range used per channel (float32, shape [C]; [1] per tensor): lo/hi broadcast to C values when
// given; otherwise the min and max of each channel, widened to [v - 1, v + 1] where they are equal
// (as torch.histc does; by max(1, |v| 2^-23), clamped to the finite floats, from |v| >= 2^23 on). Raises ValueError when x holds NaN or Inf (computed range only; the
// kernels report non-finite elements for a given range).
std::pair<at::Tensor, at::Tensor> histogram_range(const at::Tensor& x, const HistogramArgs& args,
                                                  std::optional<int64_t> axis, const std::optional<at::Tensor>& lo,
                                                  const std::optional<at::Tensor>& hi);

}  // namespace pyquant::ops
