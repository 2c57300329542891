#pragma once
// Per-element and per-candidate math of the calibration ops (range_search, histogram), shared by
// the CPU kernels and the CUDA kernels. The candidate fake-quant is quant_math.h's, unchanged.
//
// range_search candidate k = 1..K of a channel clips at the ratio r_k = k / K (float32) of its range:
//   symmetric:  clip = r_k * max|x_c|,  scale_k = clip / qmax,  zero-point 0
//   asymmetric: lo = r_k * min(min x_c, 0),  hi = r_k * max(max x_c, 0),
//               scale_k = 2 * ((hi / 2 - lo / 2) / (qmax - qmin)),
// each scale clamped to quant_math.h's usable range [min_usable_scale, max_usable_scale(qmin, qmax)],
//               zero_point_k = clamp(qmin - round_half_even(lo / scale_k), qmin, qmax), or, where the scale
//               was clamped below the span's (only near +-FLT_MAX), the grid centred on the span:
//               zero_point_k = clamp(round_half_even((qmin + qmax) / 2 - (hi / 2 + lo / 2) / scale_k), qmin, qmax)
// every step in float32 and in this order (the tests rebuild the same values with torch ops).
//
// histogram bin of x for the range [lo, hi) with `bins` bins, the expression torch.histc evaluates
// (float32, truncation toward zero), with values outside the range sent to the edge bins:
//   bin = clamp((x - lo) * bins / (hi - lo), 0, bins - 1)
// where that cannot overflow (histogram_float32_safe); otherwise the same expression in float64.
// NaN positions never reach the integer cast.
#include <cstdint>

#include "pyquant/macros.h"
#include "pyquant/quant_math.h"

namespace pyquant {

// How the per-element residuals of a candidate are combined.
enum class ErrorNorm : int {
  kL1 = 0,    // sum |d|
  kL2 = 1,    // sum d^2
  kLp = 2,    // sum |d|^p
  kLinf = 3,  // max |d|
};

// The per-channel statistics a candidate is built from: min(min x, 0) and max(max x, 0).
struct ChannelSpan {
  float lo;
  float hi;
};

PYQ_HOST_DEVICE float candidate_ratio(int64_t k, int64_t num_candidates) {
  return static_cast<float>(k) / static_cast<float>(num_candidates);
}

PYQ_HOST_DEVICE float span_absmax(const ChannelSpan& s) {
  const float a = -s.lo;
  return a > s.hi ? a : s.hi;
}

// True when the channel holds nothing but zeros (every candidate scale would be 0): such a channel
// gets scale 1 and zero-point 0.
PYQ_HOST_DEVICE bool span_is_degenerate(const ChannelSpan& s, bool symmetric) {
  return symmetric ? !(span_absmax(s) > 0.0f) : !(s.hi - s.lo > 0.0f);
}

// Candidate k (1-based) of a channel as quant_math.h constants (integer zero-point mode).
PYQ_HOST_DEVICE AffineParams candidate_params(const ChannelSpan& s, bool symmetric, int64_t k, int64_t num_candidates,
                                              float qmin, float qmax) {
  const float r = candidate_ratio(k, num_candidates);
  if (symmetric) {
    const float clip = r * span_absmax(s);
    return make_affine_params(clamp_usable_scale(clip / qmax, qmin, qmax), 0.0f, qmin, qmax);
  }
  const float lo = r * s.lo;
  const float hi = r * s.hi;
  // hi - lo overflows for a span of +-FLT_MAX: halve both first (exact for normal floats).
  const float wanted = 2.0f * ((0.5f * hi - 0.5f * lo) / (qmax - qmin));
  const float scale = clamp_usable_scale(wanted, qmin, qmax);
  // A span wider than the widest usable grid (near +-FLT_MAX) is clipped at both ends evenly: the grid is
  // centred on the span's midpoint instead of starting at lo (which would clip every positive value).
  const float zero_point = scale < wanted
                               ? clamp_level(round_half_even(0.5f * (qmin + qmax) - (0.5f * hi + 0.5f * lo) / scale), qmin, qmax)
                               : clamp_level(qmin - round_half_even(lo / scale), qmin, qmax);
  return make_affine_params(scale, zero_point, qmin, qmax);
}

// x - fake_quant(x) for one candidate: quant_math.h's forward, integer zero-point.
PYQ_HOST_DEVICE float candidate_residual(float x, const AffineParams& p) {
  const float q = clamp_level(quant_level<ZeroPointMode::kInteger>(x, p), p.qmin, p.qmax);
  return x - dequant_level<ZeroPointMode::kInteger>(q, p);
}

// |d|^p for the additive norms (kLinf combines |d| with max instead).
PYQ_HOST_DEVICE float norm_term(float d, ErrorNorm norm, float p) {
  const float a = d < 0.0f ? -d : d;
  switch (norm) {
    case ErrorNorm::kL1:
    case ErrorNorm::kLinf:
      return a;
    case ErrorNorm::kL2:
      return d * d;
    default:
      return a == 0.0f ? 0.0f : powf(a, p);
  }
}

// Index (0-based) of the smallest error; ties go to the larger candidate; NaN errors (candidates
// whose scale underflowed) are never picked. Returns num_candidates - 1 when nothing compares.
PYQ_HOST_DEVICE int64_t pick_candidate(const double* err, int64_t num_candidates) {
  int64_t best = num_candidates - 1;
  double best_err = err[best] == err[best] ? err[best] : INFINITY;
  for (int64_t k = num_candidates - 2; k >= 0; --k) {
    if (err[k] < best_err) {
      best_err = err[k];
      best = k;
    }
  }
  return best;
}

// True when torch.histc's float32 expression cannot overflow for any x in [lo, hi]: the width and
// width * bins are finite, and the width is a normal number (a subnormal width loses its precision
// and vanishes under flush-to-zero). Elsewhere (|x| > FLT_MAX / 2, or near FLT_MAX / bins, or a
// subnormal range) the bin is computed in float64.
PYQ_HOST_DEVICE bool histogram_float32_safe(float lo, float hi, float bins) {
  const float width = hi - lo;
  return width >= 1.17549435e-38f && width * bins <= 3.40282347e38f;
}

// Clamps a bin position to [0, bins - 1] before the cast; NaN goes to bin 0 (it never indexes:
// a NaN cast to an integer is undefined behaviour, on x86 INT_MIN).
PYQ_HOST_DEVICE int64_t histogram_clamp_bin(float pos, float bins) {
  if (!(pos > 0.0f)) return 0;
  if (!(pos < bins - 1.0f)) return static_cast<int64_t>(bins) - 1;
  return static_cast<int64_t>(pos);
}

// Histogram bin (see the header comment): a true division, as torch.histc does, where that cannot
// overflow; otherwise the same expression in float64, where (x - lo) * bins cannot overflow (the
// largest value is 2 FLT_MAX * 2^24 < 1e47).
PYQ_HOST_DEVICE int64_t histogram_bin(float x, float lo, float hi, float bins) {
  if (histogram_float32_safe(lo, hi, bins)) return histogram_clamp_bin((x - lo) * bins / (hi - lo), bins);
  const double pos = (static_cast<double>(x) - static_cast<double>(lo)) * static_cast<double>(bins) /
                     (static_cast<double>(hi) - static_cast<double>(lo));
  if (!(pos > 0.0)) return 0;
  if (!(pos < static_cast<double>(bins) - 1.0)) return static_cast<int64_t>(bins) - 1;
  return static_cast<int64_t>(pos);
}

}  // namespace pyquant
