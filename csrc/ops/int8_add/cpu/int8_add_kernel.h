#pragma once
// Raw-pointer kernel of int8_add, one table per CPU variant (see csrc/cpu/isa.h).
#include <cstdint>

#include "cpu/isa.h"
#include "pyquant/requantize.h"

namespace pyquant::cpu {
struct Int8AddKernels {
  // out[i] = int8_add_code(a[i], b[i]) for i in [begin, end).
  void (*add)(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t begin, int64_t end,
              const Int8AddParams& p);
};
}  // namespace pyquant::cpu

PYQ_DECLARE_ISA_TABLE(::pyquant::cpu::Int8AddKernels, int8_add_kernels)
