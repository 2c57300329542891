#pragma once
// Raw-pointer kernel of range_search, one table per CPU variant (see csrc/cpu/isa.h).
#include <cstdint>

#include "cpu/isa.h"
#include "pyquant/calib_math.h"

namespace pyquant::cpu {

// The K candidates of one channel, in the form the vectorized kernel uses: with an integer
// zero-point z, (clamp(round(x / s) + z, qmin, qmax) - z) * s == clamp(round(x / s), qmin - z, qmax - z) * s
// exactly (all levels are small integers, exact in float32), so each candidate needs four constants.
struct CandidateTable {
  const float* scale;      // [count]
  const float* inv_scale;  // [count]  1 / scale in float32, as quant_math.h
  const float* lo_level;   // [count]  qmin - zero_point
  const float* hi_level;   // [count]  qmax - zero_point
  int64_t count;
};

struct RangeSearchKernels {
  // For every candidate k: err[k] += sum over x[0, n) of |x - fake_quant_k(x)|^p (kLinf: err[k] =
  // max(err[k], max |x - fake_quant_k(x)|)). Each element is loaded once and scored against all
  // candidates while it sits in registers / L1. Per-tile partial sums are float32, folded into err in
  // double in a fixed order.
  void (*score)(const float* x, int64_t n, const CandidateTable& table, ErrorNorm norm, float p, double* err);
};

}  // namespace pyquant::cpu

PYQ_DECLARE_ISA_TABLE(::pyquant::cpu::RangeSearchKernels, range_search_kernels)
