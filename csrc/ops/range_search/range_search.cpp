#include "range_search.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace pyquant::ops {

namespace {
constexpr int64_t kLevelLimit = int64_t{1} << 17;
constexpr int64_t kMaxCandidates = 100000;
}  // namespace

RangeSearchArgs check_range_search_args(const at::Tensor& x, int64_t quant_min, int64_t quant_max,
                                        std::optional<int64_t> axis, bool symmetric, int64_t num_candidates,
                                        double p) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
                   "range_search: x must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK_VALUE(x.numel() > 0, "range_search: x must not be empty, got shape ", x.sizes());
  TORCH_CHECK_VALUE(quant_min < quant_max, "range_search: quant_min must be < quant_max, got quant_min=", quant_min,
                    ", quant_max=", quant_max);
  TORCH_CHECK_VALUE(quant_min >= -kLevelLimit && quant_max <= kLevelLimit,
                    "range_search: quant_min and quant_max must lie in [-2^17, 2^17], got [", quant_min, ", ",
                    quant_max, "]");
  TORCH_CHECK_VALUE(!symmetric || quant_max > 0,
                    "range_search: symmetric search needs quant_max > 0 (scale = clip / quant_max), got ", quant_max);
  TORCH_CHECK_VALUE(quant_min <= 0,
                    "range_search: quant_min must be <= 0 so that 0 is on the grid, got ", quant_min);
  TORCH_CHECK_VALUE(num_candidates >= 1 && num_candidates <= kMaxCandidates,
                    "range_search: num_candidates must be in [1, ", kMaxCandidates, "], got ", num_candidates);
  TORCH_CHECK_VALUE(!std::isnan(p) && p > 0.0, "range_search: p must be > 0 (or inf), got ", p);
  int64_t channels = 1;
  if (axis.has_value()) {
    TORCH_CHECK_VALUE(x.dim() > 0 && *axis >= -x.dim() && *axis < x.dim(), "range_search: axis=", *axis,
                      " is out of range for x with ", x.dim(), " dimensions");
    channels = x.size(at::maybe_wrap_dim(*axis, x.dim()));
  }
  ErrorNorm norm = ErrorNorm::kLp;
  if (std::isinf(p)) {
    norm = ErrorNorm::kLinf;
  } else if (p == 1.0) {
    norm = ErrorNorm::kL1;
  } else if (p == 2.0) {
    norm = ErrorNorm::kL2;
  }
  return {channels, norm, static_cast<float>(p)};
}

at::Tensor channel_rows(const at::Tensor& x, std::optional<int64_t> axis) {
  at::Tensor rows = axis.has_value() ? x.movedim(at::maybe_wrap_dim(*axis, x.dim()), 0).reshape({x.size(*axis), -1})
                                     : x.reshape({1, -1});
  return rows.to(at::kFloat).contiguous();
}

void check_finite_stats(const char* op, const at::Tensor& mins, const at::Tensor& maxs) {
  const bool finite = at::isfinite(mins).all().item<bool>() && at::isfinite(maxs).all().item<bool>();
  TORCH_CHECK_VALUE(finite, op, ": x must be finite, but it contains NaN or Inf");
}

}  // namespace pyquant::ops
