// Argument checks of the int8 ops, shared by the CPU and CUDA implementations.
#include "int8_gemm.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>

#include "cpu/int8_gemm_kernels.h"
#include "pyquant/requantize.h"

namespace pyquant::ops {

int64_t packed_payload_bytes(const PackedHeader& h) {
  if (h.kind == static_cast<int32_t>(PackedKind::kDepthwise)) {
    return int64_t{h.kh} * h.kw * ((int64_t{h.n} + 63) / 64 * 64);
  }
  const int64_t n_per_group = h.n / h.groups;
  return int64_t{h.groups} * cpu::int8::num_panels(n_per_group) * cpu::int8::panel_bytes(h.k);
}

PackedHeader read_packed_header(const char* op, const at::Tensor& w_packed) {
  constexpr const char* kHint = " (pass the result of pyquant.ops.pack_int8_weight)";
  TORCH_CHECK_TYPE(w_packed.scalar_type() == at::kChar, op, ": w_packed must be an int8 packed weight, got ",
                   w_packed.scalar_type(), kHint);
  TORCH_CHECK_VALUE(w_packed.dim() == 1 && w_packed.numel() >= kPackedHeaderBytes, op,
                    ": w_packed must be a 1-d packed weight, got shape ", w_packed.sizes(), kHint);
  TORCH_CHECK_VALUE(w_packed.is_contiguous(), op, ": w_packed must be contiguous", kHint);
  PackedHeader h{};
  if (w_packed.is_cpu()) {
    std::memcpy(&h, w_packed.const_data_ptr(), sizeof(h));
  } else {
    const at::Tensor head = w_packed.narrow(0, 0, sizeof(h)).cpu();
    std::memcpy(&h, head.const_data_ptr(), sizeof(h));
  }
  TORCH_CHECK_VALUE(h.magic == kPackedMagic && h.n > 0 && h.k > 0 && h.groups > 0 && h.n % h.groups == 0, op,
                    ": w_packed is not a packed weight", kHint);
  TORCH_CHECK_VALUE(w_packed.numel() == kPackedHeaderBytes + packed_payload_bytes(h), op,
                    ": w_packed has the wrong size for its header", kHint);
  return h;
}

Int8Epilogue check_int8_epilogue(const char* op, const at::Tensor& x, double x_scale, int64_t x_zero_point,
                                 const at::Tensor& w_col_sum, const at::Tensor& w_scale,
                                 const std::optional<at::Tensor>& bias, std::optional<double> out_scale,
                                 std::optional<int64_t> out_zero_point, bool relu, int64_t n) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kByte, op, ": x_q must be uint8 (quantized activations), got ",
                   x.scalar_type());
  const float xs = static_cast<float>(x_scale);
  TORCH_CHECK_VALUE(std::isfinite(xs) && xs > 0.0f, op, ": x_scale must be finite and > 0, got ", x_scale);
  TORCH_CHECK_VALUE(x_zero_point >= 0 && x_zero_point <= 255, op, ": x_zero_point must be in [0, 255], got ",
                    x_zero_point);
  TORCH_CHECK_TYPE(w_col_sum.scalar_type() == at::kInt, op, ": w_col_sum must be int32, got ",
                   w_col_sum.scalar_type());
  TORCH_CHECK_VALUE(w_col_sum.dim() == 1 && w_col_sum.numel() == n, op, ": w_col_sum must have shape [", n,
                    "], got ", w_col_sum.sizes());
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, op, ": w_scale must be float32, got ",
                   w_scale.scalar_type());
  TORCH_CHECK_VALUE(w_scale.dim() == 1 && w_scale.numel() == n, op, ": w_scale must have shape [", n, "], got ",
                    w_scale.sizes());
  for (const auto* t : {&w_col_sum, &w_scale}) {
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": weight tensors must be on x's device (", x.device(), ")");
  }
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, op, ": bias must be float32, got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->numel() == n, op, ": bias must have shape [", n, "], got ",
                      bias->sizes());
    TORCH_CHECK_VALUE(bias->device() == x.device(), op, ": bias must be on x's device (", x.device(), ")");
  }
  TORCH_CHECK_VALUE(out_scale.has_value() == out_zero_point.has_value(), op,
                    ": give both out_scale and out_zero_point (uint8 output) or neither (float32 output)");
  Int8Epilogue e{};
  e.x_scale = xs;
  e.x_zero_point = static_cast<int32_t>(x_zero_point);
  e.relu = relu;
  e.requantize = out_scale.has_value();
  if (e.requantize) {
    const float os = static_cast<float>(*out_scale);
    TORCH_CHECK_VALUE(std::isfinite(os) && os > 0.0f, op, ": out_scale must be finite and > 0, got ", *out_scale);
    TORCH_CHECK_VALUE(*out_zero_point >= 0 && *out_zero_point <= 255, op,
                      ": out_zero_point must be in [0, 255], got ", *out_zero_point);
    e.inv_out_scale = 1.0f / os;
    e.out_zero_point = static_cast<float>(*out_zero_point);
  }
  return e;
}

at::Tensor check_residual(const char* op, const std::optional<at::Tensor>& residual, const at::Tensor& out,
                          double residual_scale, int64_t residual_zero_point) {
  if (!residual.has_value()) return at::Tensor();
  TORCH_CHECK_TYPE(residual->scalar_type() == at::kByte, op, ": residual must be uint8 codes, got ",
                   residual->scalar_type());
  TORCH_CHECK_VALUE(residual->sizes() == out.sizes(), op, ": residual must have the output's shape ", out.sizes(),
                    ", got ", residual->sizes());
  TORCH_CHECK_VALUE(residual->device() == out.device(), op, ": residual must be on x's device (", out.device(), ")");
  const float rs = static_cast<float>(residual_scale);
  TORCH_CHECK_VALUE(std::isfinite(rs) && rs > 0.0f, op, ": residual_scale must be finite and > 0, got ",
                    residual_scale);
  TORCH_CHECK_VALUE(residual_zero_point >= 0 && residual_zero_point <= 255, op,
                    ": residual_zero_point must be in [0, 255], got ", residual_zero_point);
  return residual->contiguous(at::MemoryFormat::ChannelsLast);
}

ConvGeometry conv_geometry(const char* op, const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t c_out) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x_q must be 4-d [N, C, H, W], got shape ", x.sizes());
  auto pair = [&](at::IntArrayRef v, const char* name, int64_t lo) {
    TORCH_CHECK_VALUE(v.size() == 1 || v.size() == 2, op, ": ", name, " must have 1 or 2 values, got ", v);
    std::array<int64_t, 2> r{v[0], v.size() == 2 ? v[1] : v[0]};
    TORCH_CHECK_VALUE(r[0] >= lo && r[1] >= lo, op, ": ", name, " must be >= ", lo, ", got ", v);
    return r;
  };
  ConvGeometry g{};
  const auto ks = pair(kernel_size, "kernel_size", 1);
  g.stride = pair(stride, "stride", 1);
  g.padding = pair(padding, "padding", 0);
  g.dilation = pair(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be >= 1, got ", groups);
  g.groups = groups;
  g.batch = x.size(0);
  g.c_in = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.c_out = c_out;
  g.kh = ks[0];
  g.kw = ks[1];
  TORCH_CHECK_VALUE(g.c_in % groups == 0 && c_out % groups == 0, op, ": groups=", groups,
                    " must divide the input channels (", g.c_in, ") and output channels (", c_out, ")");
  const int64_t eff_h = g.dilation[0] * (g.kh - 1) + 1;
  const int64_t eff_w = g.dilation[1] * (g.kw - 1) + 1;
  g.oh = (g.h + 2 * g.padding[0] - eff_h) / g.stride[0] + 1;
  g.ow = (g.w + 2 * g.padding[1] - eff_w) / g.stride[1] + 1;
  TORCH_CHECK_VALUE(g.h + 2 * g.padding[0] >= eff_h && g.w + 2 * g.padding[1] >= eff_w, op,
                    ": the (padded) input ", g.h, "x", g.w, " is smaller than the dilated kernel ", eff_h, "x", eff_w);
  return g;
}

Int8Kernel parse_int8_kernel(const char* op, std::string_view name) {
  if (name == "auto") return Int8Kernel::kAuto;
  if (name == "amx") return Int8Kernel::kAmx;
  if (name == "vnni") return Int8Kernel::kVnni;
  if (name == "avx2") return Int8Kernel::kAvx2;
  if (name == "scalar") return Int8Kernel::kScalar;
  TORCH_CHECK_VALUE(false, op, ": kernel must be 'auto', 'amx', 'vnni', 'avx2' or 'scalar', got '", name, "'");
}

}  // namespace pyquant::ops
