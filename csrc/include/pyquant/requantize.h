#pragma once
// Epilogue math of the int8 GEMM / conv ops (int8_linear, int8_conv2d), shared verbatim by the CPU
// kernels (scalar oracle and the per-element reference of the vector epilogues) and the CUDA kernels.
//
// For u8 activations x (zero-point zx, scale sx) and s8 weights w (symmetric, scale sw[n]):
//   acc[m, n] = sum_k (x[m, k] - zx) * w[n, k]
//             = sum_k x[m, k] * w[n, k]  -  zx * col_sum[n],   col_sum[n] = sum_k w[n, k]
// The second term is folded into one per-column constant at pack/call time, so the inner loop is a pure
// u8 x s8 dot product (vpdpbusd / mma.sync s8). |acc| <= K * 255 * 128 < 2^31 for K <= 65536 (checked).
// Then, in float32 with no fused multiply-add (-ffp-contract=off / --fmad=false):
//   y = float(acc) * (sx * sw[n]) + bias[n];   y = max(y, 0) with ReLU
//   float output: y;  uint8 output: clamp(round_half_even(y * (1 / s_out)) + z_out, 0, 255)
// (x * inv_scale, as quant_math.h and ATen quantize.)
#include <cstdint>

#include "pyquant/macros.h"
#include "pyquant/quant_math.h"

namespace pyquant {

// Largest reduction length whose int32 accumulation cannot overflow (255 * 128 * K < 2^31).
constexpr int64_t kInt8MaxReduction = 65536;

// zx * col_sum[n]: subtracted from the raw u8 x s8 dot product of column n.
PYQ_HOST_DEVICE int32_t int8_zero_point_term(int32_t x_zero_point, int32_t col_sum) {
  return x_zero_point * col_sum;
}

// The float32 per-column multiplier sx * sw[n].
PYQ_HOST_DEVICE float int8_multiplier(float x_scale, float w_scale) { return x_scale * w_scale; }

// Dequantized, biased, optionally rectified output of one accumulator.
PYQ_HOST_DEVICE float int8_dequant_acc(int32_t acc, float multiplier, float bias, bool relu) {
  float y = static_cast<float>(acc) * multiplier;
  y = y + bias;
  if (relu) y = y > 0.0f ? y : 0.0f;
  return y;
}

// The fused residual add (conv -> add -> ReLU): y plus the dequantized residual code, in float32 as the
// fake-quant network adds the float conv output and the fake-quantized shortcut; ReLU after it.
PYQ_HOST_DEVICE float int8_dequant_acc_residual(int32_t acc, float multiplier, float bias, bool has_residual,
                                                uint8_t residual, float residual_scale, float residual_zero_point,
                                                bool relu) {
  float y = static_cast<float>(acc) * multiplier;
  y = y + bias;
  if (has_residual) y = y + (static_cast<float>(residual) - residual_zero_point) * residual_scale;
  if (relu) y = y > 0.0f ? y : 0.0f;
  return y;
}

// uint8 requantization of y to (s_out, z_out) given inv_out_scale = 1.0f / s_out.
PYQ_HOST_DEVICE uint8_t int8_requantize(float y, float inv_out_scale, float out_zero_point) {
  float q = round_half_even(y * inv_out_scale) + out_zero_point;
  q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
  return static_cast<uint8_t>(q);
}

}  // namespace pyquant

namespace pyquant {

// Requantizing residual add of uint8 codes (int8_add): both inputs dequantized exactly as the
// fake-quant network holds them, (code - z) * s in float32 (the difference is exact, one rounding),
// summed in float32, then quantized onto the output grid and clamped to [quant_min, quant_max].
// A ReLU (ReLU6) after the add is the clamp quant_min = max(quant_min, z_out) (quant_max =
// min(quant_max, code of 6)): quantization is monotone, so clamping codes equals clamping values.
struct Int8AddParams {
  float a_scale, a_zero_point;
  float b_scale, b_zero_point;
  float inv_out_scale, out_zero_point;
  float quant_min, quant_max;
};

PYQ_HOST_DEVICE uint8_t int8_add_code(uint8_t a, uint8_t b, const Int8AddParams& p) {
  const float da = (static_cast<float>(a) - p.a_zero_point) * p.a_scale;
  const float db = (static_cast<float>(b) - p.b_zero_point) * p.b_scale;
  const float y = da + db;
  float q = round_half_even(y * p.inv_out_scale) + p.out_zero_point;
  q = q < p.quant_min ? p.quant_min : (q > p.quant_max ? p.quant_max : q);
  return static_cast<uint8_t>(q);
}

}  // namespace pyquant
