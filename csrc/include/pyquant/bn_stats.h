#pragma once
// Per-statistic math of the BatchNorm-statistic loss (ZeroQ, Cai et al. CVPR 2020, eq. 4; DSG, Zhang
// et al. CVPR 2021, eq. 6-7; GDFQ, Xu et al. ECCV 2020, eq. 6), shared verbatim by the CPU kernels and
// the CUDA kernels, so the CPU tests check the arithmetic the GPU runs.
//
// One "statistic" is a channel of one sample (per-sample mode: the values of x[n, c, ...]) or a channel
// of the whole batch (batch mode: x[:, c, ...]). Its values are summarised by a Welford state (count,
// mean, sum of squared deviations m2) in float64, built from fixed chunks and merged in a fixed order
// (Chan et al. 1979), so results do not depend on the number of threads.
//
// Loss of one statistic with weight w (w_n / N per sample, 1 for the batch):
//   var   = m2 / (count - ddof)                    (ddof = 1 for the unbiased estimate)
//   dev   = sqrt(var + eps) - sqrt(running_var + eps)      (or var - running_var with match_var)
//   loss  = w * [ h(mean - running_mean, mean_margin)^2 + h(dev, std_margin)^2 ],  h(d, m) = max(|d| - m, 0)
// Its gradient w.r.t. one value x_i of the statistic (d mean/dx_i = 1/count,
// d var/dx_i = 2 (x_i - mean) / (count - ddof)):
//   dL/dx_i = a + b * (x_i - mean)
//   a = w * 2 h_mu sign(d_mu) / count
//   b = w * 2 h_dev sign(dev) * d(dev)/d(var) * 2 / (count - ddof),  d(dev)/d(var) = 1/(2 sigma) or 1
// (b is set to 0 where sigma = 0, i.e. eps = 0 and a constant statistic, where the derivative is infinite).
#include <cmath>

#include "pyquant/macros.h"

namespace pyquant {

struct WelfordState {
  double count;
  double mean;
  double m2;
};

PYQ_HOST_DEVICE WelfordState welford_empty() {
  return WelfordState{0.0, 0.0, 0.0};
}

// Adds one value (Welford 1962).
PYQ_HOST_DEVICE void welford_add(WelfordState& s, double x) {
  s.count += 1.0;
  const double d = x - s.mean;
  s.mean += d / s.count;
  s.m2 += d * (x - s.mean);
}

// The state of a chunk whose values sum to `sum` and whose squared deviations from sum / count add to
// `m2` (two passes over a cache-resident chunk).
PYQ_HOST_DEVICE WelfordState welford_from_chunk(double count, double sum, double m2) {
  return WelfordState{count, count > 0.0 ? sum / count : 0.0, m2};
}

// Merges two states (Chan, Golub & LeVeque 1979); exact in the order a then b.
PYQ_HOST_DEVICE WelfordState welford_merge(const WelfordState& a, const WelfordState& b) {
  if (b.count == 0.0) return a;
  if (a.count == 0.0) return b;
  const double n = a.count + b.count;
  const double d = b.mean - a.mean;
  const double frac_b = b.count / n;
  WelfordState r;
  r.count = n;
  r.mean = a.mean + d * frac_b;
  r.m2 = a.m2 + b.m2 + d * d * a.count * frac_b;
  return r;
}

// h(d, m) = max(|d| - m, 0): DSG's slack hinge (m = 0 gives ZeroQ's plain distance).
PYQ_HOST_DEVICE double stat_hinge(double d, double m) {
  const double h = fabs(d) - m;
  return h > 0.0 ? h : 0.0;
}

// d/dd of h(d, m)^2.
PYQ_HOST_DEVICE double stat_hinge_sq_grad(double d, double m) {
  const double h = stat_hinge(d, m);
  return d >= 0.0 ? 2.0 * h : -2.0 * h;
}

struct StatTerms {
  double loss;   // weighted loss of this statistic
  double mean;   // statistic mean
  double var;    // statistic variance (biased or unbiased as requested)
  double coef_a; // dL/dx_i = coef_a + coef_b * (x_i - mean)
  double coef_b;
};

struct StatTarget {
  double running_mean;
  double running_var;
  double mean_margin;
  double std_margin;
};

PYQ_HOST_DEVICE StatTerms stat_terms(const WelfordState& s, const StatTarget& t, double eps, double ddof,
                                     bool match_var, double weight) {
  StatTerms r;
  const double denom = s.count - ddof;
  const double var = s.m2 / denom;
  const double d_mu = s.mean - t.running_mean;
  const double h_mu = stat_hinge(d_mu, t.mean_margin);
  double dev;
  double ddev_dvar;
  if (match_var) {
    dev = var - t.running_var;
    ddev_dvar = 1.0;
  } else {
    const double sigma = sqrt(var + eps);
    dev = sigma - sqrt(t.running_var + eps);
    ddev_dvar = sigma > 0.0 ? 0.5 / sigma : 0.0;
  }
  const double h_dev = stat_hinge(dev, t.std_margin);
  r.loss = weight * (h_mu * h_mu + h_dev * h_dev);
  r.mean = s.mean;
  r.var = var;
  r.coef_a = weight * stat_hinge_sq_grad(d_mu, t.mean_margin) / s.count;
  r.coef_b = weight * stat_hinge_sq_grad(dev, t.std_margin) * ddev_dvar * 2.0 / denom;
  return r;
}

// Input gradient of one element (coefficients already multiplied by the upstream gradient); T is
// float for float32/bfloat16/float16 inputs, double for float64.
template <typename T>
PYQ_HOST_DEVICE T stat_grad_value(T x, T mean, T a, T b) {
  return a + b * (x - mean);
}

}  // namespace pyquant
