// Vectorized CPU kernel of the histogram op, compiled once per CPU variant (see csrc/cpu/isa.h).
// Bin indices are computed a vector at a time with torch.histc's float32 expression
// (calib_math.h histogram_bin), then counted with scalar increments spread over interleaved copies.
//
// The stages are software-pipelined: the indices of one stage are counted while the next stage is binned,
// one vector of each in turn, so the loads of x stay in flight during the increments, and the input is
// prefetched two stages ahead. Binning a whole stage and then counting it left the memory idle during
// the increments: the counting pass took 1.75x as long (bench/bench_calib.py, 2 threads; docs/calibration.md).
#include "histogram_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

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
// How far ahead of the stage being binned the input is prefetched (bytes): two stages of float32.
constexpr int64_t kPrefetchBytes = 2 * kStage * 4;

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

// Increments the counters of idx[j, end), consecutive entries in consecutive copies.
inline void count(const int32_t* idx, int64_t j, int64_t end, int64_t bins, uint32_t* hist) {
  for (; j + kHistogramCopies <= end; j += kHistogramCopies) {
    for (int64_t c = 0; c < kHistogramCopies; ++c) ++hist[c * bins + idx[j + c]];
  }
  for (; j < end; ++j) ++hist[idx[j]];
}

// count() of exactly kLanes entries (a multiple of the copies), unrolled.
inline void count_vector(const int32_t* idx, int64_t bins, uint32_t* hist) {
  static_assert(kLanes % kHistogramCopies == 0, "a vector of indices must fill whole rounds of copies");
  for (int64_t l = 0; l < kLanes; ++l) ++hist[(l % kHistogramCopies) * bins + idx[l]];
}

template <typename scalar_t>
int64_t accumulate_typed(const scalar_t* x, int64_t n, float lo, float hi, int64_t bins, uint32_t* hist) {
  if (!histogram_float32_safe(lo, hi, static_cast<float>(bins))) return accumulate_scalar(x, n, lo, hi, bins, hist);
  const Vec lo_v(lo);
  const Vec width_v(hi - lo);
  const Vec bins_v(static_cast<float>(bins));
  const Vec zero(0.0f);
  const Vec top(static_cast<float>(bins - 1));
  // No NaN here: x is finite and the range is float32-safe, so the position is finite or +-Inf.
  auto bin = [&](const Vec& v) {
    return at::vec::convert_to_int_of_same_size(at::vec::clamp((v - lo_v) * bins_v / width_v, zero, top));
  };
  Vec bad(0.0f);
  // Bins the vector at xf + i (m <= kLanes valid lanes) into out.
  auto bin_vector = [&](const float* xf, int64_t i, int64_t m, int32_t* out) {
    Vec xv = m == kLanes ? Vec::loadu(xf + i) : Vec::loadu(xf + i, m);
    // Finite lanes have x - x == 0; NaN and Inf lanes are counted and binned as lo. A partial vector is
    // zero-filled past m: finite, not counted as bad, and its extra indices are never counted.
    const Vec finite = (xv - xv) == zero;
    bad = bad + Vec::blendv(Vec(1.0f), zero, finite);
    xv = Vec::blendv(lo_v, xv, finite);
    bin(xv).store(out);
  };
  alignas(64) float staged[kStage];
  // Two stages of indices: the one being counted and the one being binned (kLanes spare entries for a
  // partial last vector's full store).
  alignas(64) int32_t idx[2][kStage + kLanes];
  int64_t filled = 0;  // indices of the stage in idx[cur]
  int cur = 0;
  constexpr int64_t kAhead = kPrefetchBytes / static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t s = 0; s < n; s += kStage) {
    const int64_t len = std::min(kStage, n - s);
    if (s + kAhead + kStage <= n) {
      const char* ahead = reinterpret_cast<const char*>(x + s + kAhead);
      for (int64_t b = 0; b < kStage * static_cast<int64_t>(sizeof(scalar_t)); b += 64) __builtin_prefetch(ahead + b, 0, 3);
    }
    const float* xf;
    if constexpr (std::is_same_v<scalar_t, float>) {
      xf = x + s;
    } else {
      at::vec::convert(x + s, staged, len);
      xf = staged;
    }
    const int32_t* counting = idx[cur];
    int32_t* binning = idx[cur ^ 1];
    // One vector of this stage binned, then one vector of the previous stage's indices counted.
    int64_t i = 0, counted = 0;
    for (; i + kLanes <= len; i += kLanes) {
      bin_vector(xf, i, kLanes, binning + i);
      if (counted + kLanes <= filled) {
        count_vector(counting + counted, bins, hist);
        counted += kLanes;
      }
    }
    if (i < len) bin_vector(xf, i, len - i, binning + i);
    count(counting, counted, filled, bins, hist);
    filled = len;
    cur ^= 1;
  }
  count(idx[cur], 0, filled, bins, hist);
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
