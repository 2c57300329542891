// CUDA kernels of the BN-statistic loss. The per-statistic arithmetic is pyquant/bn_stats.h (Welford
// merge, loss terms, gradient coefficients), the same code the CPU tests check.
//
// Forward, three launches and no host synchronisation:
//   1. row_stats_kernel: one block per row x[n, c, ...]; each thread folds its strided values into a
//      float64 Welford state, then the block merges the states in a fixed tree (warp shuffles, then
//      warps in order). The thread -> value assignment is fixed, so the result is deterministic.
//   2. finalize_kernel: one thread per statistic; batch mode merges the N row states in order n = 0..N-1;
//      writes [mean, var, coef_a, coef_b] and the statistic's loss term.
//   3. loss_kernel: one block sums the loss terms in a fixed order.
// Backward, one elementwise pass: dx = g * (a + b * (x - mean)) (stat_grad_value), with the upstream
// gradient g read on the device. Invalid running_var (negative) or NaN inputs are not rejected here
// (that would need a synchronisation): they make the loss NaN. The CPU path raises ValueError.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "../bn_stat_loss.h"
#include "pyquant/bn_stats.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kPerLane = 4;

__device__ __forceinline__ WelfordState shfl_down_state(const WelfordState& s, int offset) {
  WelfordState o;
  o.count = __shfl_down_sync(kFullMask, s.count, offset);
  o.mean = __shfl_down_sync(kFullMask, s.mean, offset);
  o.m2 = __shfl_down_sync(kFullMask, s.m2, offset);
  return o;
}

template <typename T>
__global__ void row_stats_kernel(const T* __restrict__ x, int64_t len, int64_t rows,
                                 WelfordState* __restrict__ states) {
  __shared__ WelfordState warp_states[kWarps];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = x + r * len;
    WelfordState s = welford_empty();
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) welford_add(s, static_cast<double>(row[i]));
    // Lane l merges lane l + offset: a fixed tree.
    for (int offset = 16; offset > 0; offset >>= 1) {
      const WelfordState o = shfl_down_state(s, offset);
      s = welford_merge(s, o);
    }
    if (lane == 0) warp_states[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      WelfordState t = warp_states[0];
      for (int w = 1; w < kWarps; ++w) t = welford_merge(t, warp_states[w]);
      states[r] = t;
    }
    __syncthreads();
  }
}

struct FinalizeArgs {
  const double* running_mean;
  const double* running_var;
  const double* mean_margin;    // nullptr: 0
  const double* std_margin;     // nullptr: 0
  const double* sample_weight;  // nullptr: 1
  int64_t samples;
  int64_t channels;
  int64_t stats;
  double eps;
  double ddof;
  bool per_sample;
  bool match_var;
};

__global__ void finalize_kernel(const WelfordState* __restrict__ states, FinalizeArgs a, double* __restrict__ out,
                                double* __restrict__ terms) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < a.stats;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = j % a.channels;
    WelfordState s;
    double weight = 1.0;
    if (a.per_sample) {
      s = states[j];
      const int64_t n = j / a.channels;
      weight = (a.sample_weight != nullptr ? a.sample_weight[n] : 1.0) / static_cast<double>(a.samples);
    } else {
      s = welford_empty();
      for (int64_t n = 0; n < a.samples; ++n) s = welford_merge(s, states[n * a.channels + c]);
    }
    StatTarget target;
    target.running_mean = a.running_mean[c];
    target.running_var = a.running_var[c];
    target.mean_margin = a.mean_margin != nullptr ? a.mean_margin[c] : 0.0;
    target.std_margin = a.std_margin != nullptr ? a.std_margin[c] : 0.0;
    const StatTerms t = stat_terms(s, target, a.eps, a.ddof, a.match_var, weight);
    out[j * kStatColumns + kStatMean] = t.mean;
    out[j * kStatColumns + kStatVar] = t.var;
    out[j * kStatColumns + kStatCoefA] = t.coef_a;
    out[j * kStatColumns + kStatCoefB] = t.coef_b;
    terms[j] = t.loss;
  }
}

template <typename out_t>
__global__ void loss_kernel(const double* __restrict__ terms, int64_t n, out_t* __restrict__ loss) {
  __shared__ double partial[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += terms[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<out_t>(partial[0]);
}

template <typename T>
struct alignas(sizeof(T) * kPerLane) Pack {
  T v[kPerLane];
};

// Each thread handles kPerLane consecutive values; vector loads/stores when aligned.
template <typename T>
__global__ void backward_kernel(const T* __restrict__ x, T* __restrict__ dx, int64_t n, int64_t len, int64_t channels,
                                bool per_sample, const double* __restrict__ stats, const double* __restrict__ grad,
                                bool vector_ok) {
  using acc_t = at::acc_type<T, /*is_cuda=*/true>;
  const double g = *grad;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kPerLane;
  for (int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kPerLane; base < n;
       base += stride) {
    acc_t xv[kPerLane];
    acc_t out[kPerLane];
    const bool full = vector_ok && base + kPerLane <= n;
    if (full) {
      const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(x + base);
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) xv[k] = static_cast<acc_t>(pk.v[k]);
    } else {
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) xv[k] = base + k < n ? static_cast<acc_t>(x[base + k]) : acc_t(0);
    }
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t row = (base + k) / len;
      const int64_t j = per_sample ? row : row % channels;
      const double* st = stats + (base + k < n ? j : 0) * kStatColumns;
      out[k] = stat_grad_value<acc_t>(xv[k], static_cast<acc_t>(st[kStatMean]),
                                      static_cast<acc_t>(g * st[kStatCoefA]), static_cast<acc_t>(g * st[kStatCoefB]));
    }
    if (full) {
      Pack<T> pk;
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) pk.v[k] = static_cast<T>(out[k]);
      *reinterpret_cast<Pack<T>*>(dx + base) = pk;
    } else {
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) {
        if (base + k < n) dx[base + k] = static_cast<T>(out[k]);
      }
    }
  }
}

int grid_for(int64_t work_items, int threads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = (work_items + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, sms * 16)));
}

Tensor as_double_vector(const Tensor& t) {
  return t.detach().to(at::kDouble).contiguous().view(-1);
}

#define PYQ_BN_CUDA_DISPATCH(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pyquant_bn_stat_loss", __VA_ARGS__)

std::tuple<Tensor, Tensor> bn_stat_loss_cuda(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                                             double eps, bool per_sample, bool unbiased,
                                             const std::optional<Tensor>& mean_margin,
                                             const std::optional<Tensor>& std_margin,
                                             const std::optional<Tensor>& sample_weight, bool match_var) {
  const BnStatLayout L = check_bn_stat_loss_args(x, running_mean, running_var, eps, per_sample, unbiased,
                                                 mean_margin, std_margin, sample_weight);
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Tensor xd = x.contiguous();
  const int64_t rows = L.samples * L.channels;
  Tensor states = at::empty({rows * 3}, x.options().dtype(at::kDouble));
  auto* states_ptr = reinterpret_cast<WelfordState*>(states.mutable_data_ptr<double>());
  const int row_grid = static_cast<int>(std::min<int64_t>(rows, 65535));
  PYQ_BN_CUDA_DISPATCH(xd.scalar_type(), [&] {
    row_stats_kernel<scalar_t><<<row_grid, kThreads, 0, stream>>>(xd.const_data_ptr<scalar_t>(), L.row_len, rows,
                                                                    states_ptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const Tensor rm = as_double_vector(running_mean);
  const Tensor rv = as_double_vector(running_var);
  const Tensor mm = mean_margin.has_value() ? as_double_vector(*mean_margin) : Tensor();
  const Tensor sm = std_margin.has_value() ? as_double_vector(*std_margin) : Tensor();
  const Tensor sw = sample_weight.has_value() ? as_double_vector(*sample_weight) : Tensor();
  FinalizeArgs a;
  a.running_mean = rm.const_data_ptr<double>();
  a.running_var = rv.const_data_ptr<double>();
  a.mean_margin = mm.defined() ? mm.const_data_ptr<double>() : nullptr;
  a.std_margin = sm.defined() ? sm.const_data_ptr<double>() : nullptr;
  a.sample_weight = sw.defined() ? sw.const_data_ptr<double>() : nullptr;
  a.samples = L.samples;
  a.channels = L.channels;
  a.stats = L.stats;
  a.eps = eps;
  a.ddof = unbiased ? 1.0 : 0.0;
  a.per_sample = per_sample;
  a.match_var = match_var;
  Tensor stats = at::empty({L.stats, kStatColumns}, x.options().dtype(at::kDouble));
  Tensor terms = at::empty({L.stats}, x.options().dtype(at::kDouble));
  finalize_kernel<<<grid_for(L.stats, kThreads), kThreads, 0, stream>>>(
      states_ptr, a, stats.mutable_data_ptr<double>(), terms.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  Tensor loss = at::empty({}, x.options().dtype(bn_stat_loss_dtype(x.scalar_type())));
  if (loss.scalar_type() == at::kDouble) {
    loss_kernel<double><<<1, kThreads, 0, stream>>>(terms.const_data_ptr<double>(), L.stats,
                                                     loss.mutable_data_ptr<double>());
  } else {
    loss_kernel<float><<<1, kThreads, 0, stream>>>(terms.const_data_ptr<double>(), L.stats,
                                                    loss.mutable_data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, stats};
}

Tensor bn_stat_loss_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& stats, bool per_sample) {
  const BnStatLayout L = check_bn_stat_loss_backward_args(grad, x, stats, per_sample);
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const Tensor xd = x.contiguous();
  const Tensor st = stats.contiguous();
  const Tensor g = grad.detach().to(at::kDouble).contiguous();
  Tensor dx = at::empty_like(xd);
  const int64_t n = xd.numel();
  const bool vector_ok = reinterpret_cast<uintptr_t>(xd.const_data_ptr()) % (xd.element_size() * kPerLane) == 0 &&
                         reinterpret_cast<uintptr_t>(dx.const_data_ptr()) % (dx.element_size() * kPerLane) == 0;
  PYQ_BN_CUDA_DISPATCH(xd.scalar_type(), [&] {
    backward_kernel<scalar_t><<<grid_for((n + kPerLane - 1) / kPerLane, kThreads), kThreads, 0, stream>>>(
        xd.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), n, L.row_len, L.channels, per_sample,
        st.const_data_ptr<double>(), g.const_data_ptr<double>(), vector_ok);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CUDA, m) {
  m.impl("bn_stat_loss", &bn_stat_loss_cuda);
  m.impl("bn_stat_loss_backward", &bn_stat_loss_backward_cuda);
}

}  // namespace pyquant::ops
