#pragma once
// Per-element math of affine fake quantization, shared verbatim by the CPU kernels (scalar tails and
// the oracle path) and the CUDA kernels. The vectorized CPU code in csrc/ops/*/cpu/ follows the same
// operation order step by step; the tests compare both against torch.fake_quantize_* bit for bit.
//
// Conventions (identical to ATen, so results are bit-exact with torch.fake_quantize_*):
//   * x / scale is computed as x * inv_scale with inv_scale = 1.0f / scale in float32;
//   * rounding is half-to-even (nearbyint / rint under the default rounding mode);
//   * integer zero-point: q = round(x * inv_scale) + zero_point      (round, then shift)
//     float zero-point:   q = round(x * inv_scale + zero_point)      (shift, then round; ATen's rule
//                                                                     for float zero-points; the
//                          multiply-add is fused (one rounding) where ATen's build fuses it: CUDA and
//                          the AVX2/AVX-512 CPU capabilities, not the portable one)
//   * y = (clamp(q, qmin, qmax) - zero_point) * scale in float32 (in double, rounded once, for float
//     zero-points: ATen's expression).
// All values stay exact in float32 because |q|, |zero_point| <= 2^17 (checked on the host).
// NaN in x propagates to y (and is out of range for the mask); +-Inf saturates to qmax / qmin.

#include <cmath>
#include <cstdint>

#include "pyquant/macros.h"

namespace pyquant {

// How the zero-point enters the rounding; see the header comment.
enum class ZeroPointMode : int {
  kInteger = 0,  // int32 zero-points (and float ones rounded first, as LSQ does)
  kFloat = 1,    // float zero-points, added before rounding
};

// One quantizer's constants (one per channel, or one for the whole tensor).
struct AffineParams {
  float scale;
  float inv_scale;
  float zero_point;
  float qmin;
  float qmax;
};

PYQ_HOST_DEVICE float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

PYQ_HOST_DEVICE bool is_finite_positive(float v) {
  // NaN compares false; +Inf fails the second test.
  return v > 0.0f && v <= 3.402823466e+38f;
}

// The scales a calibration may produce for the grid [qmin, qmax]: at least the smallest normal
// float32 (a subnormal scale has an infinite reciprocal, and 0 * inf = NaN), and at most
// FLT_MAX / (qmax - qmin) rounded down, so that every dequantized level (q - z) * scale is finite.
PYQ_HOST_DEVICE float min_usable_scale() {
  return 1.17549435e-38f;
}
PYQ_HOST_DEVICE float max_usable_scale(float qmin, float qmax) {
  return 3.40282347e38f / (qmax - qmin) * 0.99999988f;
}
PYQ_HOST_DEVICE float clamp_usable_scale(float scale, float qmin, float qmax) {
  const float lo = min_usable_scale();
  const float hi = max_usable_scale(qmin, qmax);
  return scale < lo ? lo : (scale > hi ? hi : scale);
}

// The scales fake_quant accepts (host_params raises on the others; PYQUANT_CHECK checks the same on
// the device): finite, > 0, a finite reciprocal (not subnormal: 0 * inf = NaN) and finite levels
// scale * (qmax - qmin).
PYQ_HOST_DEVICE bool scale_is_usable(float scale, float qmin, float qmax) {
  return is_finite_positive(scale) && is_finite_positive(1.0f / scale) && is_finite_positive(scale * (qmax - qmin));
}

// Builds the constants. An unusable scale (scale_is_usable) or zero-point outside [qmin, qmax] poisons
// the quantizer so every output is NaN: the host rejects such values on CPU before any kernel runs;
// on CUDA, where reading them would cost a device synchronisation, the poison keeps the error visible.
PYQ_HOST_DEVICE AffineParams make_affine_params(float scale, float zero_point, float qmin, float qmax) {
  AffineParams p;
  const bool valid = scale_is_usable(scale, qmin, qmax) && zero_point >= qmin && zero_point <= qmax;
  p.scale = valid ? scale : NAN;
  p.inv_scale = 1.0f / p.scale;
  p.zero_point = zero_point;
  p.qmin = qmin;
  p.qmax = qmax;
  return p;
}

// LSQ learns a float zero-point but quantizes with it rounded half-to-even and clamped into the
// integer grid, as torch._fake_quantize_learnable_* do.
PYQ_HOST_DEVICE float round_zero_point(float zero_point, float qmin, float qmax) {
  const float r = round_half_even(zero_point);
  return r < qmin ? qmin : (r > qmax ? qmax : r);
}

// Unclamped quantization level. Out-of-range levels mark the STE mask.
template <ZeroPointMode kMode>
PYQ_HOST_DEVICE float quant_level(float x, const AffineParams& p) {
  if (kMode == ZeroPointMode::kInteger) {
    return round_half_even(x * p.inv_scale) + p.zero_point;
  } else {
#if defined(__CUDA_ARCH__)
    // ATen's CUDA kernel is built with nvcc's default --fmad=true, which fuses this expression; we
    // build with --fmad=false, so fuse explicitly to keep one rounding as ATen does.
    return round_half_even(__fmaf_rn(x, p.inv_scale, p.zero_point));
#else
    // Portable (DEFAULT) CPU path: unfused, as ATen's default-capability build. The AVX2/AVX-512
    // kernels fuse (fake_quant_kernel.cpp), as ATen's builds for those capabilities do.
    return round_half_even(x * p.inv_scale + p.zero_point);
#endif
  }
}

// Clamp that lets NaN through (std::fmin/fmax would swallow it).
PYQ_HOST_DEVICE float clamp_level(float q, float lo, float hi) {
  return q < lo ? lo : (q > hi ? hi : q);
}

PYQ_HOST_DEVICE bool level_in_range(float q, const AffineParams& p) {
  return q >= p.qmin && q <= p.qmax;
}

// With an integer zero-point, q - z is exact and the product is rounded once: the float32 result
// equals ATen's double-precision expression. With a float zero-point ATen's double product can differ
// from a float32 one, so that case is evaluated in double and rounded once to float, as ATen does.
template <ZeroPointMode kMode>
PYQ_HOST_DEVICE float dequant_level(float q_clamped, const AffineParams& p) {
  if (kMode == ZeroPointMode::kInteger) {
    return (q_clamped - p.zero_point) * p.scale;
  } else {
    return static_cast<float>((static_cast<double>(q_clamped) - static_cast<double>(p.zero_point)) *
                              static_cast<double>(p.scale));
  }
}

template <ZeroPointMode kMode>
PYQ_HOST_DEVICE float fake_quant_value(float x, const AffineParams& p, bool* in_range) {
  const float q = quant_level<kMode>(x, p);
  *in_range = level_in_range(q, p);
  return dequant_level<kMode>(clamp_level(q, p.qmin, p.qmax), p);
}

// LSQ (Esser et al., ICLR 2020, eq. 3) per-element gradient factors for d(scale) and d(zero_point),
// in the form torch._fake_quantize_learnable_* use (before grad_factor and the upstream gradient):
//   below the grid: ds = qmin - z, dz = -s;  above: ds = qmax - z, dz = -s;
//   inside:         ds = (fq(x) - x) / s,    dz = 0.
struct LsqTerms {
  float dscale;
  float dzero_point;
  bool in_range;
};

PYQ_HOST_DEVICE LsqTerms lsq_terms(float x, const AffineParams& p) {
  const float q = quant_level<ZeroPointMode::kInteger>(x, p);
  LsqTerms t;
  if (q < p.qmin) {
    t.dscale = p.qmin - p.zero_point;
    t.dzero_point = -p.scale;
    t.in_range = false;
  } else if (q > p.qmax) {
    t.dscale = p.qmax - p.zero_point;
    t.dzero_point = -p.scale;
    t.in_range = false;
  } else {
    t.dscale = (dequant_level<ZeroPointMode::kInteger>(q, p) - x) * p.inv_scale;
    t.dzero_point = 0.0f;
    t.in_range = q == q;  // false for NaN
  }
  return t;
}

// PACT (Choi et al. 2018, eq. 1-3): y = round(clamp(x, 0, alpha) * n / alpha) * alpha / n with
// n = 2^bits - 1 levels. Forward is the affine fake-quant with scale = alpha / n, zero-point 0 and the
// grid [0, n]. Straight-through: dy/dx = 1 on [0, alpha), 0 elsewhere; dy/dalpha = 1 where x >= alpha.
PYQ_HOST_DEVICE float pact_scale(float alpha, float levels) {
  return alpha / levels;
}

PYQ_HOST_DEVICE bool pact_passes_x(float x, float alpha) {
  return x >= 0.0f && x < alpha;
}

PYQ_HOST_DEVICE bool pact_clipped_high(float x, float alpha) {
  return x >= alpha;
}

}  // namespace pyquant
