#pragma once
// Raw-pointer kernel of the histogram op, one table per CPU variant (see csrc/cpu/isa.h).
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"

namespace pyquant::cpu {

// Number of interleaved sub-histograms a kernel call increments (consecutive elements go to
// different copies, so runs of equal values do not serialise on one counter).
constexpr int64_t kHistogramCopies = 4;

struct HistogramKernels {
  // Bins x[0, n) (dtype float32/float16/bfloat16) into hist, kHistogramCopies copies of `bins`
  // counters laid out one after another, with calib_math.h histogram_bin for [lo, hi).
  // Returns how many elements were NaN or +-Inf (counted into bin 0; the caller raises).
  int64_t (*accumulate)(c10::ScalarType dtype, const void* x, int64_t n, float lo, float hi, int64_t bins,
                        uint32_t* hist);
};

}  // namespace pyquant::cpu

PYQ_DECLARE_ISA_TABLE(::pyquant::cpu::HistogramKernels, histogram_kernels)
