#include "histogram.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace pyquant::ops {

namespace {
constexpr int64_t kMaxBins = int64_t{1} << 24;

void check_bound(const char* name, const at::Tensor& t, const at::Tensor& x, int64_t channels) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "histogram: ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "histogram: ", name, " must be on the device of x (", x.device(),
                    "), got ", t.device());
  TORCH_CHECK_VALUE(t.numel() == 1 || t.numel() == channels, "histogram: ", name, " must have 1 or ", channels,
                    " values, got ", t.numel());
}
}  // namespace

HistogramArgs check_histogram_args(const at::Tensor& x, int64_t bins, const std::optional<at::Tensor>& lo,
                                   const std::optional<at::Tensor>& hi, std::optional<int64_t> axis,
                                   const std::optional<at::Tensor>& counts) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
                   "histogram: x must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK_VALUE(x.numel() > 0, "histogram: x must not be empty, got shape ", x.sizes());
  TORCH_CHECK_VALUE(bins >= 1 && bins <= kMaxBins, "histogram: bins must be in [1, 2^24], got ", bins);
  int64_t channels = 1;
  if (axis.has_value()) {
    TORCH_CHECK_VALUE(x.dim() > 0 && *axis >= -x.dim() && *axis < x.dim(), "histogram: axis=", *axis,
                      " is out of range for x with ", x.dim(), " dimensions");
    channels = x.size(at::maybe_wrap_dim(*axis, x.dim()));
  }
  TORCH_CHECK_VALUE(lo.has_value() == hi.has_value(), "histogram: lo and hi must be given together (or both None)");
  if (lo.has_value()) {
    check_bound("lo", *lo, x, channels);
    check_bound("hi", *hi, x, channels);
  }
  if (counts.has_value()) {
    TORCH_CHECK_TYPE(counts->scalar_type() == at::kLong, "histogram: counts must be int64, got ",
                     counts->scalar_type());
    TORCH_CHECK_VALUE(counts->device() == x.device(), "histogram: counts must be on the device of x");
    const bool ok = axis.has_value() ? counts->sizes() == at::IntArrayRef({channels, bins})
                                     : counts->sizes() == at::IntArrayRef({bins});
    TORCH_CHECK_VALUE(ok, "histogram: counts must have shape ",
                      axis.has_value() ? at::IntArrayRef({channels, bins}) : at::IntArrayRef({bins}), ", got ",
                      counts->sizes());
  }
  return {channels, axis.has_value()};
}

std::pair<at::Tensor, at::Tensor> histogram_range(const at::Tensor& x, const HistogramArgs& args,
                                                  std::optional<int64_t> axis, const std::optional<at::Tensor>& lo,
                                                  const std::optional<at::Tensor>& hi) {
  const int64_t C = args.channels;
  if (lo.has_value()) {
    at::Tensor l = lo->detach().to(at::kFloat).reshape({-1}).expand({C}).clone(at::MemoryFormat::Contiguous);
    at::Tensor h = hi->detach().to(at::kFloat).reshape({-1}).expand({C}).clone(at::MemoryFormat::Contiguous);
    TORCH_CHECK_VALUE(at::isfinite(l).all().item<bool>() && at::isfinite(h).all().item<bool>(),
                      "histogram: lo and hi must be finite");
    TORCH_CHECK_VALUE(at::lt(l, h).all().item<bool>(), "histogram: lo must be < hi in every channel");
    return {l, h};
  }
  at::Tensor mn, mx;
  if (!axis.has_value()) {
    std::tie(mn, mx) = at::aminmax(x);
    mn = mn.reshape({1});
    mx = mx.reshape({1});
  } else {
    const int64_t a = at::maybe_wrap_dim(*axis, x.dim());
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (d != a) dims.push_back(d);
    }
    mn = dims.empty() ? x : at::amin(x, dims);
    mx = dims.empty() ? x : at::amax(x, dims);
  }
  mn = mn.to(at::kFloat).reshape({C});
  mx = mx.to(at::kFloat).reshape({C});
  TORCH_CHECK_VALUE(at::isfinite(mn).all().item<bool>() && at::isfinite(mx).all().item<bool>(),
                    "histogram: x must be finite, but it contains NaN or Inf");
  // A constant channel v gets [v - 1, v + 1] (torch.histc); from |v| >= 2^23 on, v +- 1 rounds back
  // to v, so the half-width grows to |v| * 2^-23 (about one ulp), kept inside the finite floats.
  const at::Tensor same = at::eq(mn, mx);
  const at::Tensor delta = at::clamp_min(at::abs(mn) * 1.1920928955078125e-07f, 1.0f);
  constexpr float kMax = 3.40282347e38f;
  return {at::where(same, at::clamp_min(mn - delta, -kMax), mn).contiguous(),
          at::where(same, at::clamp_max(mx + delta, kMax), mx).contiguous()};
}

}  // namespace pyquant::ops
