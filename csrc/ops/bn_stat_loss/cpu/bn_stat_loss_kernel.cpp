// Vectorized CPU kernels of the BN-statistic loss. Compiled once per CPU variant (setup.py defines
// CPU_CAPABILITY and its -m flags); at::vec::Vectorized maps to AVX-512, AVX2 or portable code.
//
// Forward: each row is cut into fixed chunks of kBnStatChunk values; a chunk is converted to float64
// and reduced in two passes while it sits in L1 (sum, then squared deviations from the chunk mean),
// and the chunk states are merged in order with pyquant/bn_stats.h welford_merge. Float64 throughout
// and a per-chunk shift by the chunk mean keep large offsets (|mean| >> std) accurate.
// Backward: dx = a + b * (x - mean) per row (bn_stats.h stat_grad_value), in float32 for
// float32/bfloat16/float16 inputs and float64 for float64.
#include "bn_stat_loss_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#if !defined(CPU_CAPABILITY)
#error "compile this file with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512"
#endif

namespace pyquant::cpu::CPU_CAPABILITY {
namespace {

using VecD = at::vec::Vectorized<double>;
using VecF = at::vec::Vectorized<float>;
constexpr int64_t kLanesD = VecD::size();
constexpr int64_t kLanesF = VecF::size();

// Lane sum in a fixed order.
inline double lane_sum(const VecD& v) {
  double lanes[kLanesD];
  v.store(lanes);
  double s = 0.0;
  for (int64_t i = 0; i < kLanesD; ++i) s += lanes[i];
  return s;
}

// Sum of d[0..n) in float64: two vector accumulators, then the scalar tail.
inline double chunk_sum(const double* d, int64_t n) {
  VecD acc0(0.0), acc1(0.0);
  int64_t i = 0;
  for (; i + 2 * kLanesD <= n; i += 2 * kLanesD) {
    acc0 = acc0 + VecD::loadu(d + i);
    acc1 = acc1 + VecD::loadu(d + i + kLanesD);
  }
  for (; i + kLanesD <= n; i += kLanesD) acc0 = acc0 + VecD::loadu(d + i);
  double s = lane_sum(acc0 + acc1);
  for (; i < n; ++i) s += d[i];
  return s;
}

// Sum of (d[i] - mean)^2 in float64.
inline double chunk_sq_dev(const double* d, int64_t n, double mean) {
  const VecD m(mean);
  VecD acc0(0.0), acc1(0.0);
  int64_t i = 0;
  for (; i + 2 * kLanesD <= n; i += 2 * kLanesD) {
    const VecD e0 = VecD::loadu(d + i) - m;
    const VecD e1 = VecD::loadu(d + i + kLanesD) - m;
    acc0 = acc0 + e0 * e0;
    acc1 = acc1 + e1 * e1;
  }
  for (; i + kLanesD <= n; i += kLanesD) {
    const VecD e = VecD::loadu(d + i) - m;
    acc0 = acc0 + e * e;
  }
  double s = lane_sum(acc0 + acc1);
  for (; i < n; ++i) {
    const double e = d[i] - mean;
    s += e * e;
  }
  return s;
}

template <typename scalar_t>
void row_stats_typed(const scalar_t* x, int64_t len, int64_t r0, int64_t r1, WelfordState* states) {
  alignas(64) double buf[kBnStatChunk];
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* row = x + r * len;
    WelfordState s = welford_empty();
    for (int64_t c0 = 0; c0 < len; c0 += kBnStatChunk) {
      const int64_t n = std::min(kBnStatChunk, len - c0);
      const double* d;
      if constexpr (std::is_same_v<scalar_t, double>) {
        d = row + c0;
      } else {
        at::vec::convert(row + c0, buf, n);
        d = buf;
      }
      const double sum = chunk_sum(d, n);
      const double cnt = static_cast<double>(n);
      const double m2 = chunk_sq_dev(d, n, sum / cnt);
      s = welford_merge(s, welford_from_chunk(cnt, sum, m2));
    }
    states[r] = s;
  }
}

// dx = a + b * (x - mean) over one row of floats.
inline void grad_row_float(const float* x, float* dx, int64_t n, float mean, float a, float b) {
  const VecF vm(mean), va(a), vb(b);
  int64_t i = 0;
  for (; i + kLanesF <= n; i += kLanesF) {
    (va + vb * (VecF::loadu(x + i) - vm)).store(dx + i);
  }
  if (i < n) (va + vb * (VecF::loadu(x + i, n - i) - vm)).store(dx + i, n - i);
}

inline void grad_row_double(const double* x, double* dx, int64_t n, double mean, double a, double b) {
  const VecD vm(mean), va(a), vb(b);
  int64_t i = 0;
  for (; i + kLanesD <= n; i += kLanesD) {
    (va + vb * (VecD::loadu(x + i) - vm)).store(dx + i);
  }
  if (i < n) (va + vb * (VecD::loadu(x + i, n - i) - vm)).store(dx + i, n - i);
}

template <typename scalar_t>
void row_backward_typed(const scalar_t* x, scalar_t* dx, int64_t len, int64_t r0, int64_t r1, const RowCoef* coef) {
  alignas(64) float fin[kBnStatChunk];
  alignas(64) float fout[kBnStatChunk];
  for (int64_t r = r0; r < r1; ++r) {
    const RowCoef& k = coef[r];
    const scalar_t* xr = x + r * len;
    scalar_t* dr = dx + r * len;
    if constexpr (std::is_same_v<scalar_t, double>) {
      grad_row_double(xr, dr, len, k.mean, k.a, k.b);
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      grad_row_float(xr, dr, len, static_cast<float>(k.mean), static_cast<float>(k.a), static_cast<float>(k.b));
    } else {
      for (int64_t c0 = 0; c0 < len; c0 += kBnStatChunk) {
        const int64_t n = std::min(kBnStatChunk, len - c0);
        at::vec::convert(xr + c0, fin, n);
        grad_row_float(fin, fout, n, static_cast<float>(k.mean), static_cast<float>(k.a), static_cast<float>(k.b));
        at::vec::convert(fout, dr + c0, n);
      }
    }
  }
}

#define PYQ_BN_DISPATCH(dtype, ...)                                 \
  switch (dtype) {                                                  \
    case c10::ScalarType::Float: {                                  \
      using scalar_t = float;                                       \
      __VA_ARGS__();                                                \
      break;                                                        \
    }                                                               \
    case c10::ScalarType::Double: {                                 \
      using scalar_t = double;                                      \
      __VA_ARGS__();                                                \
      break;                                                        \
    }                                                               \
    case c10::ScalarType::BFloat16: {                               \
      using scalar_t = c10::BFloat16;                               \
      __VA_ARGS__();                                                \
      break;                                                        \
    }                                                               \
    case c10::ScalarType::Half: {                                   \
      using scalar_t = c10::Half;                                   \
      __VA_ARGS__();                                                \
      break;                                                        \
    }                                                               \
    default:                                                        \
      TORCH_CHECK(false, "pyquant bn_stat_loss: unsupported dtype ", dtype); \
  }

void row_stats(c10::ScalarType dtype, const void* x, int64_t len, int64_t r0, int64_t r1, WelfordState* states) {
  PYQ_BN_DISPATCH(dtype, [&] { row_stats_typed(static_cast<const scalar_t*>(x), len, r0, r1, states); });
}

void row_backward(c10::ScalarType dtype, const void* x, void* dx, int64_t len, int64_t r0, int64_t r1,
                  const RowCoef* coef) {
  PYQ_BN_DISPATCH(dtype, [&] {
    row_backward_typed(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(dx), len, r0, r1, coef);
  });
}

const BnStatKernels kKernels{&row_stats, &row_backward};

}  // namespace

const BnStatKernels* bn_stat_loss_kernels() {
  return &kKernels;
}

}  // namespace pyquant::cpu::CPU_CAPABILITY
