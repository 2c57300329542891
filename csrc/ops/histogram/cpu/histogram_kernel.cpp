// Vectorized CPU kernel of the histogram op, compiled once per CPU variant (see csrc/cpu/isa.h).
// Bin indices are computed a vector at a time with torch.histc's float32 expression
// (calib_math.h histogram_bin), then counted with scalar increments spread over interleaved copies.
#include "histogram_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

#include "pyquant/calib_math.h"

#if !defined(CPU_CAPABILITY)
#error "compile this file with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512"
#endif

namespace pyquant::cpu::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
using IVec = at::vec::Vectorized<int32_t>;
constexpr int64_t kLanes = Vec::size();
static_assert(IVec::size() == kLanes, "int32 and float vectors must have the same lane count");
constexpr int64_t kStage = 256;

// Ranges where the float32 expression could overflow (calib_math.h histogram_float32_safe): one
// element at a time through histogram_bin's float64 path. Rare (|x| near FLT_MAX or a subnormal
// range), so not vectorized.
template <typename scalar_t>
int64_t accumulate_scalar(const scalar_t* x, int64_t n, float lo, float hi, int64_t bins, uint32_t* hist) {
  const float nb = static_cast<float>(bins);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    if (!std::isfinite(v)) {
      ++bad;
      continue;
    }
    ++hist[(i % kHistogramCopies) * bins + histogram_bin(v, lo, hi, nb)];
  }
  return bad;
}

template <typename scalar_t>
int64_t accumulate_typed(const scalar_t* x, int64_t n, float lo, float hi, int64_t bins, uint32_t* hist) {
  if (!histogram_float32_safe(lo, hi, static_cast<float>(bins))) return accumulate_scalar(x, n, lo, hi, bins, hist);
  const Vec lo_v(lo);
  const Vec width_v(hi - lo);
  const Vec bins_v(static_cast<float>(bins));
  const Vec zero(0.0f);
  const Vec top(static_cast<float>(bins - 1));
  Vec bad(0.0f);
  alignas(64) float staged[kStage];
  alignas(64) int32_t idx[kStage];
  for (int64_t s = 0; s < n; s += kStage) {
    const int64_t len = std::min(kStage, n - s);
    const float* xf;
    if constexpr (std::is_same_v<scalar_t, float>) {
      xf = x + s;
    } else {
      at::vec::convert(x + s, staged, len);
      xf = staged;
    }
    int64_t i = 0;
    for (; i < len; i += kLanes) {
      const int64_t m = std::min(kLanes, len - i);
      Vec xv = m == kLanes ? Vec::loadu(xf + i) : Vec::loadu(xf + i, m);
      // Finite lanes have x - x == 0; NaN and Inf lanes are counted and binned as lo.
      const Vec finite = (xv - xv) == zero;
      bad = bad + Vec::blendv(Vec(1.0f), zero, finite);
      xv = Vec::blendv(lo_v, xv, finite);
      // No NaN here: x is finite and the range is float32-safe, so pos is finite or +-Inf.
      const Vec pos = at::vec::clamp((xv - lo_v) * bins_v / width_v, zero, top);
      const IVec b = at::vec::convert_to_int_of_same_size(pos);
      if (m == kLanes) {
        b.store(idx + i);
      } else {
        b.store(idx + i, m);
      }
    }
    // A partial last vector is zero-filled past len: finite, not counted as bad, not binned below.
    int64_t j = 0;
    for (; j + kHistogramCopies <= len; j += kHistogramCopies) {
      for (int64_t c = 0; c < kHistogramCopies; ++c) ++hist[c * bins + idx[j + c]];
    }
    for (; j < len; ++j) ++hist[idx[j]];
  }
  float lanes[kLanes];
  bad.store(lanes);
  double total = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return static_cast<int64_t>(total);
}

int64_t accumulate(c10::ScalarType dtype, const void* x, int64_t n, float lo, float hi, int64_t bins,
                   uint32_t* hist) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return accumulate_typed(static_cast<const float*>(x), n, lo, hi, bins, hist);
    case c10::ScalarType::Half:
      return accumulate_typed(static_cast<const c10::Half*>(x), n, lo, hi, bins, hist);
    case c10::ScalarType::BFloat16:
      return accumulate_typed(static_cast<const c10::BFloat16*>(x), n, lo, hi, bins, hist);
    default:
      TORCH_CHECK(false, "histogram: unsupported dtype ", dtype);
  }
}

const HistogramKernels kKernels{&accumulate};

}  // namespace

const HistogramKernels* histogram_kernels() {
  return &kKernels;
}

}  // namespace pyquant::cpu::CPU_CAPABILITY
