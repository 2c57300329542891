#include "bn_stat_loss.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace pyquant::ops {

namespace {

bool is_supported_input_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_channel_vector(const char* name, const at::Tensor& t, const at::Tensor& x, int64_t channels) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "bn_stat_loss: ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "bn_stat_loss: ", name, " must be on the same device as x (",
                    x.device(), "), got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.numel() == channels, "bn_stat_loss: ", name,
                    " must be a 1-d tensor with C = x.shape[1] = ", channels, " elements, got shape ", t.sizes());
}

}  // namespace

at::ScalarType bn_stat_loss_dtype(at::ScalarType x_dtype) {
  return x_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

BnStatLayout check_bn_stat_loss_args(const at::Tensor& x, const at::Tensor& running_mean,
                                     const at::Tensor& running_var, double eps, bool per_sample, bool unbiased,
                                     const std::optional<at::Tensor>& mean_margin,
                                     const std::optional<at::Tensor>& std_margin,
                                     const std::optional<at::Tensor>& sample_weight) {
  TORCH_CHECK_TYPE(is_supported_input_dtype(x.scalar_type()),
                   "bn_stat_loss: x must be float32, bfloat16, float16 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 2, "bn_stat_loss: x must have shape [N, C, *] (at least 2 dimensions), got ",
                    x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, "bn_stat_loss: x must not be empty, got shape ", x.sizes());
  const int64_t n = x.size(0);
  const int64_t c = x.size(1);
  check_channel_vector("running_mean", running_mean, x, c);
  check_channel_vector("running_var", running_var, x, c);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, "bn_stat_loss: eps must be finite and >= 0, got ", eps);
  if (mean_margin.has_value()) check_channel_vector("mean_margin", *mean_margin, x, c);
  if (std_margin.has_value()) check_channel_vector("std_margin", *std_margin, x, c);
  if (sample_weight.has_value()) {
    TORCH_CHECK_VALUE(per_sample, "bn_stat_loss: sample_weight needs per_sample=True (batch statistics have no "
                      "per-sample terms)");
    const at::Tensor& w = *sample_weight;
    TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), "bn_stat_loss: sample_weight must be a floating-point "
                     "tensor, got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == x.device(), "bn_stat_loss: sample_weight must be on the same device as x (",
                      x.device(), "), got ", w.device());
    TORCH_CHECK_VALUE(w.dim() == 1 && w.numel() == n, "bn_stat_loss: sample_weight must be a 1-d tensor with N = "
                      "x.shape[0] = ", n, " elements, got shape ", w.sizes());
  }
  BnStatLayout layout;
  layout.samples = n;
  layout.channels = c;
  layout.row_len = x.numel() / (n * c);
  layout.stats = per_sample ? n * c : c;
  layout.count = static_cast<double>(per_sample ? layout.row_len : n * layout.row_len);
  TORCH_CHECK_VALUE(!unbiased || layout.count >= 2.0,
                    "bn_stat_loss: x: the unbiased variance needs at least 2 values per statistic, but x of shape ",
                    x.sizes(), per_sample ? " has 1 spatial value per sample and channel (per_sample=True)"
                                          : " has 1 value per channel",
                    "; use unbiased=False");
  return layout;
}

BnStatLayout check_bn_stat_loss_backward_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& stats,
                                              bool per_sample) {
  TORCH_CHECK_TYPE(is_supported_input_dtype(x.scalar_type()),
                   "bn_stat_loss_backward: x must be float32, bfloat16, float16 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.numel() > 0, "bn_stat_loss_backward: x must be a non-empty [N, C, *] tensor");
  TORCH_CHECK_VALUE(grad.numel() == 1, "bn_stat_loss_backward: grad must hold the one gradient of the loss, got ",
                    grad.numel(), " elements");
  TORCH_CHECK_VALUE(grad.device() == x.device() && stats.device() == x.device(),
                    "bn_stat_loss_backward: grad and stats must be on x's device ", x.device());
  TORCH_CHECK_TYPE(stats.scalar_type() == at::kDouble, "bn_stat_loss_backward: stats must be float64, got ",
                   stats.scalar_type());
  BnStatLayout layout;
  layout.samples = x.size(0);
  layout.channels = x.size(1);
  layout.row_len = x.numel() / (layout.samples * layout.channels);
  layout.stats = per_sample ? layout.samples * layout.channels : layout.channels;
  layout.count = static_cast<double>(per_sample ? layout.row_len : layout.samples * layout.row_len);
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == layout.stats && stats.size(1) == kStatColumns,
                    "bn_stat_loss_backward: stats must be the [", layout.stats, ", ", int(kStatColumns),
                    "] tensor returned by bn_stat_loss for this x, got shape ", stats.sizes());
  return layout;
}

}  // namespace pyquant::ops
