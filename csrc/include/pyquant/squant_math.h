#pragma once
// SQuant rounding (Guo et al., ICLR 2022), the per-element and per-kernel math shared by the CPU
// kernel and the CUDA kernel. The algorithm and its guarantees are documented in
// pyquant/reference/squant.py (the plain-PyTorch oracle these functions match bit for bit).
// All arithmetic is in double: errors d = q - clamp(x) are exact for float32 x, and so are their sums
// in any order for realistic kernels (see the reference's docstring).
#include <cmath>
#include <cstdint>

#include "pyquant/macros.h"

namespace pyquant::squant {

// SQuant-E: q = round_half_even(clamp(x, qmin, qmax)), err = q - clamp(x, qmin, qmax).
PYQ_HOST_DEVICE void round_element(double x, double qmin, double qmax, double* q, double* err) {
  const double xc = x < qmin ? qmin : (x > qmax ? qmax : x);
  const double r = rint(xc);  // half-to-even under the default rounding mode (CUDA: always)
  *q = r;
  *err = r - xc;
}

PYQ_HOST_DEVICE double sign_of(double v) { return static_cast<double>((v > 0.0) - (v < 0.0)); }

PYQ_HOST_DEVICE double error_sum(const double* err, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += err[i];
  return s;
}

// Candidate order of every selection: larger priority first, then the lower index.
PYQ_HOST_DEVICE bool ranks_before(double prio_a, int64_t idx_a, double prio_b, int64_t idx_b) {
  return prio_a > prio_b || (prio_a == prio_b && idx_a < idx_b);
}

// The cheapest move against `dir` (+1: one level down, -1: one level up) among err[0..n): the
// element with the largest dir * err > 0 (first index on ties); -1 when there is none. Moving it
// changes its error from dir*e in (0, 1) to dir*e - 1 in (-1, 0), so it is never picked twice.
PYQ_HOST_DEVICE int64_t best_move(const double* err, int64_t n, double dir, double* prio) {
  int64_t best = -1;
  double best_prio = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = dir * err[i];
    if (p > 0.0 && (best < 0 || p > best_prio)) {
      best = i;
      best_prio = p;
    }
  }
  *prio = best_prio;
  return best;
}

// SQuant-K on one kernel of n elements: with e = sum err, moves the round_half_even(|e|) cheapest
// elements one level against sign(e) (repeated best_move = descending priority, lower index on
// ties). Returns the kernel's error sum afterwards (|.| <= 0.5).
PYQ_HOST_DEVICE double kernel_flip(double* q, double* err, int64_t n) {
  const double e = error_sum(err, n);
  const double dir = sign_of(e);
  const int64_t flips = static_cast<int64_t>(rint(fabs(e)));
  int64_t done = 0;
  for (; done < flips; ++done) {
    double p;
    const int64_t i = best_move(err, n, dir, &p);
    if (i < 0) break;  // cannot happen with clamped inputs (see the reference); kept as a guard
    q[i] -= dir;
    err[i] -= dir;
  }
  return e - dir * static_cast<double>(done);
}

// SQuant-C bookkeeping for one kernel with error sum ksum: the element it offers to the channel
// stage (a move against sign(ksum)) and that move's priority; -1 when ksum == 0.
PYQ_HOST_DEVICE int64_t kernel_candidate(const double* err, int64_t n, double ksum, double* prio) {
  const double dir = sign_of(ksum);
  if (dir == 0.0) {
    *prio = 0.0;
    return -1;
  }
  return best_move(err, n, dir, prio);
}

// The channel stage's move count and direction from the channel's error sum.
PYQ_HOST_DEVICE int64_t channel_flips(double channel_sum) { return static_cast<int64_t>(rint(fabs(channel_sum))); }

}  // namespace pyquant::squant
