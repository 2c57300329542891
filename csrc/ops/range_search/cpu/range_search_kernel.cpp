// Vectorized CPU kernel of range_search, compiled once per CPU variant (see csrc/cpu/isa.h).
//
// The data are cut into tiles of kTileVectors vectors. A tile is loaded once; for each candidate
// the tile's elements are fake-quantized (quant_math.h's integer-zero-point forward, written with
// the equivalent clamp of the rounded level to [qmin - z, qmax - z]), their residuals raised to the
// norm and summed in float32 vector registers; the tile's sum is then added to the candidate's
// double accumulator. A partial last tile is padded with zeros, whose residual is exactly 0 for
// every candidate (0 lies on every grid), so no lane masking is needed.
#include "range_search_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>

#if !defined(CPU_CAPABILITY)
#error "compile this file with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512"
#endif

namespace pyquant::cpu::CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr int64_t kTileVectors = 16;
constexpr int64_t kTile = kTileVectors * kLanes;

// x - fake_quant(x) for one candidate (calib_math.h candidate_residual, vectorized).
inline Vec residual(const Vec& x, const Vec& inv_scale, const Vec& scale, const Vec& lo, const Vec& hi) {
  const Vec level = at::vec::clamp((x * inv_scale).round(), lo, hi);
  return x - level * scale;
}

template <ErrorNorm kNorm>
inline Vec accumulate(const Vec& acc, const Vec& d, const Vec& p) {
  if constexpr (kNorm == ErrorNorm::kL2) {
    return at::vec::fmadd(d, d, acc);
  } else if constexpr (kNorm == ErrorNorm::kL1) {
    return acc + d.abs();
  } else if constexpr (kNorm == ErrorNorm::kLinf) {
    return at::vec::clamp_min(acc, d.abs());
  } else {
    // pow(0, p) = 0 for p > 0, so padded lanes stay 0.
    return acc + d.abs().pow(p);
  }
}

template <ErrorNorm kNorm>
inline void score_tile(const float* xs, const CandidateTable& t, const Vec& p, double* err) {
  Vec xv[kTileVectors];
  for (int64_t v = 0; v < kTileVectors; ++v) xv[v] = Vec::loadu(xs + v * kLanes);
  for (int64_t k = 0; k < t.count; ++k) {
    const Vec inv(t.inv_scale[k]);
    const Vec scale(t.scale[k]);
    const Vec lo(t.lo_level[k]);
    const Vec hi(t.hi_level[k]);
    // Two independent chains for instruction-level parallelism.
    Vec a0(0.0f), a1(0.0f);
    for (int64_t v = 0; v < kTileVectors; v += 2) {
      a0 = accumulate<kNorm>(a0, residual(xv[v], inv, scale, lo, hi), p);
      a1 = accumulate<kNorm>(a1, residual(xv[v + 1], inv, scale, lo, hi), p);
    }
    if constexpr (kNorm == ErrorNorm::kLinf) {
      const float m = at::vec::vec_reduce_all<float>(
          [](Vec& a, Vec& b) { return at::vec::clamp_min(a, b); }, at::vec::clamp_min(a0, a1));
      err[k] = std::max(err[k], static_cast<double>(m));
    } else {
      err[k] += static_cast<double>(at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, a0 + a1));
    }
  }
}

template <ErrorNorm kNorm>
void score_typed(const float* x, int64_t n, const CandidateTable& t, float p, double* err) {
  const Vec pv(p);
  int64_t base = 0;
  for (; base + kTile <= n; base += kTile) score_tile<kNorm>(x + base, t, pv, err);
  if (base < n) {
    alignas(64) float padded[kTile];
    std::memset(padded, 0, sizeof(padded));
    std::memcpy(padded, x + base, sizeof(float) * static_cast<size_t>(n - base));
    score_tile<kNorm>(padded, t, pv, err);
  }
}

void score(const float* x, int64_t n, const CandidateTable& t, ErrorNorm norm, float p, double* err) {
  switch (norm) {
    case ErrorNorm::kL1:
      return score_typed<ErrorNorm::kL1>(x, n, t, p, err);
    case ErrorNorm::kL2:
      return score_typed<ErrorNorm::kL2>(x, n, t, p, err);
    case ErrorNorm::kLinf:
      return score_typed<ErrorNorm::kLinf>(x, n, t, p, err);
    default:
      return score_typed<ErrorNorm::kLp>(x, n, t, p, err);
  }
}

const RangeSearchKernels kKernels{&score};

}  // namespace

const RangeSearchKernels* range_search_kernels() {
  return &kKernels;
}

}  // namespace pyquant::cpu::CPU_CAPABILITY
