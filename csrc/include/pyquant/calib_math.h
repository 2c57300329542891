#pragma once
// Per-element and per-candidate math of the calibration ops (range_search, histogram), shared by
// the CPU kernels and the CUDA kernels. The candidate fake-quant is quant_math.h's, unchanged.
//
// range_search candidate k = 1..K of a channel clips at the ratio r_k = k / K (float32) of its range:
//   symmetric:  clip = r_k * max|x_c|,  scale_k = clip / qmax,  zero-point 0
//   asymmetric: lo = r_k * min(min x_c, 0),  hi = r_k * max(max x_c, 0),
//               scale_k = (hi - lo) / (qmax - qmin),
//               zero_point_k = clamp(qmin - round_half_even(lo / scale_k), qmin, qmax)
// every step in float32 and in this order (the tests rebuild the same values with torch ops).
//
// histogram bin of x for the range [lo, hi) with `bins` bins, the expression torch.histc evaluates
// (float32, truncation toward zero), with values outside the range sent to the edge bins:
//   bin = clamp((x - lo) * bins / (hi - lo), 0, bins - 1)
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
    return make_affine_params(clip / qmax, 0.0f, qmin, qmax);
  }
  const float lo = r * s.lo;
  const float hi = r * s.hi;
  const float scale = (hi - lo) / (qmax - qmin);
  const float zero_point = clamp_level(qmin - round_half_even(lo / scale), qmin, qmax);
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

// Histogram bin (see the header comment): a true division, as torch.histc does.
PYQ_HOST_DEVICE int64_t histogram_bin(float x, float lo, float hi, float bins) {
  float pos = (x - lo) * bins / (hi - lo);
  pos = pos < 0.0f ? 0.0f : pos;
  pos = pos > bins - 1.0f ? bins - 1.0f : pos;
  return static_cast<int64_t>(pos);
}

}  // namespace pyquant
