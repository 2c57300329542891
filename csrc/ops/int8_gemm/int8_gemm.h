#pragma once
// Argument checking and the packed-weight header of the int8 ops (pack_int8_weight, int8_linear,
// int8_conv2d), shared by every backend.
//
// A packed weight is a 1-D int8 tensor: a 64-byte header (PackedHeader) followed by the payload, so a
// tensor that was not produced by pack_int8_weight (or was packed for another shape) is rejected with
// a clear error instead of being read as garbage. Payload layouts: see cpu/int8_gemm_kernels.h.
#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace pyquant::ops {

constexpr int32_t kPackedMagic = 0x38495150;  // "PQI8"
constexpr int64_t kPackedHeaderBytes = 64;

enum class PackedKind : int32_t { kGemm = 0, kDepthwise = 1 };

struct PackedHeader {
  int32_t magic;
  int32_t kind;   // PackedKind
  int32_t n;      // output channels (all groups)
  int32_t k;      // reduction length per group: in_features, or (C_in / groups) * KH * KW
  int32_t groups;
  int32_t kh, kw;  // 1, 1 for linear weights
  int32_t cin_per_group;
};

// Payload bytes of a packed weight.
int64_t packed_payload_bytes(const PackedHeader& h);

// Reads and validates the header of w_packed (dtype, 1-D, contiguous, magic, size).
PackedHeader read_packed_header(const char* op, const at::Tensor& w_packed);

// Validated scalar arguments of a call.
struct Int8Epilogue {
  float x_scale;
  int32_t x_zero_point;
  bool requantize;
  float inv_out_scale;
  float out_zero_point;
  bool relu;
};

Int8Epilogue check_int8_epilogue(const char* op, const at::Tensor& x, double x_scale, int64_t x_zero_point,
                                 const at::Tensor& w_col_sum, const at::Tensor& w_scale,
                                 const std::optional<at::Tensor>& bias, std::optional<double> out_scale,
                                 std::optional<int64_t> out_zero_point, bool relu, int64_t n);

// The fused residual of int8_conv2d: uint8 codes of the output's shape [N, C_out, OH, OW], returned
// in the output's layout (channels_last, dense) -- or an undefined tensor when absent.
at::Tensor check_residual(const char* op, const std::optional<at::Tensor>& residual, const at::Tensor& out,
                          double residual_scale, int64_t residual_zero_point);

// Output geometry of int8_conv2d.
struct ConvGeometry {
  int64_t batch, c_in, h, w, c_out, kh, kw, oh, ow;
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
};
ConvGeometry conv_geometry(const char* op, const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t c_out);

// "auto" | "amx" | "vnni" | "avx2" | "scalar" (CPU path selection, a private argument used by the tests).
enum class Int8Kernel { kAuto, kAmx, kVnni, kAvx2, kScalar };
Int8Kernel parse_int8_kernel(const char* op, std::string_view name);

}  // namespace pyquant::ops
