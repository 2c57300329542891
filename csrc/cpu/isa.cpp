#include "isa.h"

#include <ATen/Version.h>

namespace pyquant::cpu {

Isa current_isa() {
  // at::get_cpu_capability() reports what ATen dispatches to on this CPU, after ATEN_CPU_CAPABILITY.
  static const Isa isa = [] {
    const std::string cap = at::get_cpu_capability();
    if (cap.rfind("AVX512", 0) == 0) return Isa::kAvx512;
    if (cap.rfind("AVX2", 0) == 0) return Isa::kAvx2;
    return Isa::kDefault;
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

}  // namespace pyquant::cpu
