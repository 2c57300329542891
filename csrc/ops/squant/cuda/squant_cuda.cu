// CUDA kernel of squant_round. Pass 1: one thread per kernel (o, i) rounds its K elements
// (SQuant-E), runs SQuant-K and records the kernel's error sum and its channel-stage candidate
// (pyquant/squant_math.h). Pass 2: one thread per output channel runs SQuant-C: it repeatedly takes
// the best remaining candidate of the channel's direction in the shared order (priority, then
// kernel index) -- the same set the CPU kernel's partial sort selects. Work per channel is
// sequential, so results are deterministic and equal to the CPU's.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "../squant.h"
#include "pyquant/squant_math.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

constexpr int kThreads = 128;

template <typename T>
__global__ void squant_kernel_stage(const T* __restrict__ x, int64_t kernels, int64_t K, double qmin, double qmax,
                                    bool kernel_stage, double* __restrict__ q, double* __restrict__ err,
                                    double* __restrict__ ksum, int64_t* __restrict__ cand,
                                    double* __restrict__ prio) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= kernels) return;
  const int64_t base = k * K;
  for (int64_t j = 0; j < K; ++j) {
    squant::round_element(static_cast<double>(x[base + j]), qmin, qmax, q + base + j, err + base + j);
  }
  const double s = kernel_stage ? squant::kernel_flip(q + base, err + base, K) : squant::error_sum(err + base, K);
  ksum[k] = s;
  cand[k] = squant::kernel_candidate(err + base, K, s, prio + k);
}

__global__ void squant_channel_stage(int64_t O, int64_t I, int64_t K, double* __restrict__ q,
                                     double* __restrict__ err, double* __restrict__ ksum,
                                     int64_t* __restrict__ cand, const double* __restrict__ prio) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= O) return;
  double* ks = ksum + o * I;
  double total = 0.0;
  for (int64_t i = 0; i < I; ++i) total += ks[i];
  const double dir = squant::sign_of(total);
  const int64_t flips = squant::channel_flips(total);
  for (int64_t t = 0; t < flips; ++t) {
    int64_t best = -1;
    for (int64_t i = 0; i < I; ++i) {
      // Each kernel moves at most once (a used one is marked with cand = -1), as on the CPU.
      if (cand[o * I + i] < 0 || squant::sign_of(ks[i]) != dir) continue;
      if (best < 0 || squant::ranks_before(prio[o * I + i], i, prio[o * I + best], best)) best = i;
    }
    if (best < 0) break;
    const int64_t j = (o * I + best) * K + cand[o * I + best];
    q[j] -= dir;
    err[j] -= dir;
    ks[best] -= dir;
    cand[o * I + best] = -1;
  }
}

Tensor squant_round_cuda(const Tensor& x, int64_t quant_min, int64_t quant_max, bool kernel_stage,
                         bool channel_stage) {
  const SquantShape shape = check_squant_args(x, quant_min, quant_max);
  const c10::cuda::CUDAGuard guard(x.device());
  check_squant_finite(at::isfinite(x).all().item<bool>());
  const int64_t O = shape.out_channels, I = shape.kernels, K = shape.kernel_size;
  const Tensor src = x.contiguous();
  const auto dopt = x.options().dtype(at::kDouble).memory_format(at::MemoryFormat::Contiguous);
  Tensor q = at::empty({O * I * K}, dopt);
  Tensor err = at::empty({O * I * K}, dopt);
  Tensor ksum = at::empty({O * I}, dopt);
  Tensor prio = at::empty({O * I}, dopt);
  Tensor cand = at::empty({O * I}, dopt.dtype(at::kLong));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t kernels = O * I;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "squant_round_cuda", [&] {
    const unsigned blocks = static_cast<unsigned>((kernels + kThreads - 1) / kThreads);
    squant_kernel_stage<scalar_t><<<blocks, kThreads, 0, stream>>>(
        src.const_data_ptr<scalar_t>(), kernels, K, static_cast<double>(quant_min), static_cast<double>(quant_max),
        kernel_stage, q.mutable_data_ptr<double>(), err.mutable_data_ptr<double>(), ksum.mutable_data_ptr<double>(),
        cand.mutable_data_ptr<int64_t>(), prio.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (channel_stage) {
    const unsigned blocks = static_cast<unsigned>((O + kThreads - 1) / kThreads);
    squant_channel_stage<<<blocks, kThreads, 0, stream>>>(O, I, K, q.mutable_data_ptr<double>(),
                                                          err.mutable_data_ptr<double>(),
                                                          ksum.mutable_data_ptr<double>(),
                                                          cand.mutable_data_ptr<int64_t>(), prio.const_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return q.view(x.sizes()).to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CUDA, m) {
  m.impl("squant_round", &squant_round_cuda);
}

}  // namespace pyquant::ops
