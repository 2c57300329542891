#include "squant.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace pyquant::ops {

void check_squant_finite(bool finite) {
  TORCH_CHECK_VALUE(finite, "squant_round: x must be finite, but it contains NaN or Inf");
}

SquantShape check_squant_args(const at::Tensor& x, int64_t quant_min, int64_t quant_max) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble, "squant_round: x must be float32 or float64, got ", t);
  TORCH_CHECK_VALUE(x.dim() >= 2, "squant_round: x must have at least 2 dimensions [O, I, ...], got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, "squant_round: x must not be empty, got shape ", x.sizes());
  constexpr int64_t kLimit = int64_t{1} << 24;
  TORCH_CHECK_VALUE(quant_min < quant_max, "squant_round: quant_min (", quant_min, ") must be < quant_max (",
                    quant_max, ")");
  TORCH_CHECK_VALUE(quant_min >= -kLimit && quant_max <= kLimit, "squant_round: quant_min and quant_max must lie in ",
                    "[-2^24, 2^24], got [", quant_min, ", ", quant_max, "]");
  const int64_t O = x.size(0);
  const int64_t I = x.size(1);
  return {O, I, x.numel() / (O * I)};
}

}  // namespace pyquant::ops
