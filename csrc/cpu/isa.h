#pragma once
// Run-time choice among the CPU kernel variants this extension was compiled with.
//
// Each kernel file under csrc/ops/<op>/cpu/*_kernel.cpp is compiled once per variant (DEFAULT, AVX2,
// AVX512), with that variant's -m flags and CPU_CAPABILITY macros, so at::vec::Vectorized picks the
// matching instruction set. The variant is chosen once per process from ATen's own CPU capability,
// which honours ATEN_CPU_CAPABILITY=default|avx2|avx512 (the tests use it to check every variant).
#include <string>

namespace pyquant::cpu {

enum class Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The variant used by this process.
Isa current_isa();
const char* isa_name(Isa isa);

// Picks `table[current_isa()]`; variants missing from the build fall back to the next lower one.
template <typename Table>
const Table& select_isa(const Table* default_table, const Table* avx2_table, const Table* avx512_table) {
  switch (current_isa()) {
    case Isa::kAvx512:
      if (avx512_table != nullptr) return *avx512_table;
      [[fallthrough]];
    case Isa::kAvx2:
      if (avx2_table != nullptr) return *avx2_table;
      [[fallthrough]];
    default:
      return *default_table;
  }
}

}  // namespace pyquant::cpu

// Declares the per-variant accessor `const TABLE* NAME()` in namespaces DEFAULT, AVX2 and AVX512.
// Variants not compiled (non-x86 builds) are weak and resolve to nullptr.
#define PYQ_DECLARE_ISA_TABLE(TABLE, NAME)                                  \
  namespace pyquant::cpu::DEFAULT { const TABLE* NAME(); }                  \
  namespace pyquant::cpu::AVX2 { __attribute__((weak)) const TABLE* NAME(); } \
  namespace pyquant::cpu::AVX512 { __attribute__((weak)) const TABLE* NAME(); }

#define PYQ_SELECT_ISA_TABLE(NAME)                                                   \
  ::pyquant::cpu::select_isa(::pyquant::cpu::DEFAULT::NAME(),                        \
                             ::pyquant::cpu::AVX2::NAME ? ::pyquant::cpu::AVX2::NAME() : nullptr, \
                             ::pyquant::cpu::AVX512::NAME ? ::pyquant::cpu::AVX512::NAME() : nullptr)
