#pragma once
// Raw-pointer kernels of the BN-statistic loss, one table per CPU variant (see csrc/cpu/isa.h). They
// see x as rows of `len` contiguous values (x[n, c, ...] is row n * C + c).
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"
#include "pyquant/bn_stats.h"

namespace pyquant::cpu {

// Per-row constants of the backward: dx = a + b * (x - mean) (already scaled by the upstream gradient).
struct RowCoef {
  double mean;
  double a;
  double b;
};

struct BnStatKernels {
  // Welford state of each row r in [r0, r1) into states[r], from fixed chunks of kBnStatChunk values
  // merged in order (the result does not depend on how rows are split among threads).
  void (*row_stats)(c10::ScalarType dtype, const void* x, int64_t len, int64_t r0, int64_t r1,
                    WelfordState* states);
  // dx of rows [r0, r1): row r uses coef[r].
  void (*row_backward)(c10::ScalarType dtype, const void* x, void* dx, int64_t len, int64_t r0, int64_t r1,
                       const RowCoef* coef);
};

constexpr int64_t kBnStatChunk = 512;

}  // namespace pyquant::cpu

PYQ_DECLARE_ISA_TABLE(::pyquant::cpu::BnStatKernels, bn_stat_loss_kernels)
