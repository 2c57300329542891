// Argument checks of int8_add, shared by the CPU and CUDA implementations.
#include "int8_add.h"

#include <ATen/ATen.h>

#include <cmath>

namespace pyquant::ops {
namespace {

float checked_scale(const char* name, double v) {
  const float s = static_cast<float>(v);
  TORCH_CHECK_VALUE(std::isfinite(s) && s > 0.0f, "int8_add: ", name, " must be finite and > 0, got ", v);
  return s;
}

float checked_zero_point(const char* name, int64_t v) {
  TORCH_CHECK_VALUE(v >= 0 && v <= 255, "int8_add: ", name, " must be in [0, 255], got ", v);
  return static_cast<float>(v);
}

}  // namespace

Int8AddCall check_int8_add(const at::Tensor& a_q, double a_scale, int64_t a_zero_point, const at::Tensor& b_q,
                           double b_scale, int64_t b_zero_point, double out_scale, int64_t out_zero_point,
                           int64_t quant_min, int64_t quant_max) {
  TORCH_CHECK_TYPE(a_q.scalar_type() == at::kByte, "int8_add: a_q must be uint8 codes, got ", a_q.scalar_type());
  TORCH_CHECK_TYPE(b_q.scalar_type() == at::kByte, "int8_add: b_q must be uint8 codes, got ", b_q.scalar_type());
  TORCH_CHECK_VALUE(a_q.sizes() == b_q.sizes(), "int8_add: a_q and b_q must have the same shape, got ", a_q.sizes(),
                    " and ", b_q.sizes());
  TORCH_CHECK_VALUE(a_q.device() == b_q.device(), "int8_add: a_q and b_q must be on the same device, got ",
                    a_q.device(), " and ", b_q.device());
  TORCH_CHECK_VALUE(0 <= quant_min && quant_min <= quant_max && quant_max <= 255,
                    "int8_add: need 0 <= quant_min <= quant_max <= 255, got [", quant_min, ", ", quant_max, "]");
  Int8AddCall c;
  c.params.a_scale = checked_scale("a_scale", a_scale);
  c.params.b_scale = checked_scale("b_scale", b_scale);
  c.params.inv_out_scale = 1.0f / checked_scale("out_scale", out_scale);
  c.params.a_zero_point = checked_zero_point("a_zero_point", a_zero_point);
  c.params.b_zero_point = checked_zero_point("b_zero_point", b_zero_point);
  c.params.out_zero_point = checked_zero_point("out_zero_point", out_zero_point);
  c.params.quant_min = static_cast<float>(quant_min);
  c.params.quant_max = static_cast<float>(quant_max);
  // The converted networks' activations are channels_last (the int8 convs' output): keep a's layout.
  const auto format = a_q.suggest_memory_format();
  c.a = a_q.contiguous(format);
  c.b = b_q.contiguous(format);
  return c;
}

}  // namespace pyquant::ops
