// int8_add kernels, compiled once per CPU variant (csrc/cpu/isa.h). The DEFAULT variant runs
// int8_add_code of pyquant/requantize.h -- the CUDA kernel's code -- element by element; the AVX2 /
// AVX-512 variants run the same operations in the same order on at::vec::Vectorized<float> lanes
// (round_half_even = Vectorized::round, nearest-even like std::nearbyint), so every variant is bit-exact.
#include <ATen/cpu/vec/vec.h>

#include "../int8_add.h"
#include "int8_add_kernel.h"

#if !defined(CPU_CAPABILITY)
#error "compile this file with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512"
#endif

namespace pyquant::cpu::CPU_CAPABILITY {
namespace {

void add_scalar(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t begin, int64_t end,
                const Int8AddParams& p) {
  for (int64_t i = begin; i < end; ++i) out[i] = int8_add_code(a[i], b[i], p);
}

#if defined(CPU_CAPABILITY_DEFAULT)

void add(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t begin, int64_t end, const Int8AddParams& p) {
  add_scalar(a, b, out, begin, end, p);
}

#else

using Vec = at::vec::Vectorized<float>;
using VecU8 = at::vec::Vectorized<uint8_t>;

void add(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t begin, int64_t end, const Int8AddParams& p) {
  constexpr int64_t kLanes = Vec::size();
  const Vec sa(p.a_scale), za(p.a_zero_point), sb(p.b_scale), zb(p.b_zero_point);
  const Vec inv(p.inv_out_scale), zo(p.out_zero_point), lo(p.quant_min), hi(p.quant_max);
  int64_t i = begin;
  // A full uint8 vector load covers VecU8::size() >= kLanes bytes: only take it where that stays in range.
  for (; i + VecU8::size() <= end; i += kLanes) {
    const Vec fa = at::vec::convert_int8_to_float<uint8_t>(VecU8::loadu(a + i));
    const Vec fb = at::vec::convert_int8_to_float<uint8_t>(VecU8::loadu(b + i));
    const Vec y = (fa - za) * sa + (fb - zb) * sb;
    const Vec q = at::vec::clamp((y * inv).round() + zo, lo, hi);
    at::vec::convert_float_to_int8<uint8_t>(q).store(out + i, kLanes);
  }
  add_scalar(a, b, out, i, end, p);
}

#endif

const Int8AddKernels kKernels{&add};

}  // namespace

const Int8AddKernels* int8_add_kernels() {
  return &kKernels;
}

}  // namespace pyquant::cpu::CPU_CAPABILITY
