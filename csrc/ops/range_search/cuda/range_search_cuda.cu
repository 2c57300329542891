// CUDA kernels of range_search. Grid (chunks, channels): a block holds kChunk elements of one channel
// in registers (kPerThread per thread, coalesced loads) and scores every candidate against them with
// calib_math.h / quant_math.h (the same functions the CPU tests check), reducing each candidate's
// block sum in a fixed order (warp shuffles, then warps in order) into its own slot of a partial
// table; a second kernel folds the chunks in order and picks the argmin. Deterministic, no atomics.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "../range_search.h"
#include "pyquant/calib_math.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPerThread = 8;
constexpr int64_t kChunk = int64_t{kThreads} * kPerThread;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ ChannelSpan load_span(const float* mins, const float* maxs, int64_t c) {
  return ChannelSpan{fminf(mins[c], 0.0f), fmaxf(maxs[c], 0.0f)};
}

template <ErrorNorm kNorm>
__device__ __forceinline__ double combine(double a, double b) {
  return kNorm == ErrorNorm::kLinf ? fmax(a, b) : a + b;
}

template <ErrorNorm kNorm>
__global__ void score_kernel(const float* __restrict__ rows, int64_t n, int64_t chunks, const float* __restrict__ mins,
                             const float* __restrict__ maxs, bool symmetric, int64_t num_candidates, float qmin,
                             float qmax, float p, double* __restrict__ partial) {
  __shared__ double warp_part[kWarps];
  const int64_t c = blockIdx.y;
  const int64_t chunk = blockIdx.x;
  const ChannelSpan span = load_span(mins, maxs, c);
  if (span_is_degenerate(span, symmetric)) return;  // partial stays 0
  const float* row = rows + c * n;
  float xv[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t e = chunk * kChunk + j * kThreads + threadIdx.x;
    xv[j] = e < n ? row[e] : 0.0f;  // 0 has residual 0 under every candidate
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  double* out = partial + (c * chunks + chunk) * num_candidates;
  for (int64_t k = 0; k < num_candidates; ++k) {
    const AffineParams prm = candidate_params(span, symmetric, k + 1, num_candidates, qmin, qmax);
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const float t = norm_term(candidate_residual(xv[j], prm), kNorm, p);
      acc = kNorm == ErrorNorm::kLinf ? fmaxf(acc, t) : acc + t;
    }
    double v = acc;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = combine<kNorm>(v, __shfl_down_sync(kFullMask, v, offset));
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
      double total = warp_part[0];
      for (int w = 1; w < kWarps; ++w) total = combine<kNorm>(total, warp_part[w]);
      out[k] = total;
    }
    __syncthreads();
  }
}

template <ErrorNorm kNorm>
__global__ void finalize_kernel(const double* __restrict__ partial, int64_t channels, int64_t chunks,
                                const float* __restrict__ mins, const float* __restrict__ maxs, bool symmetric,
                                int64_t num_candidates, float qmin, float qmax, double* __restrict__ errors,
                                float* __restrict__ scale, int32_t* __restrict__ zero_point) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  double* err = errors + c * num_candidates;
  for (int64_t k = 0; k < num_candidates; ++k) {
    double total = partial[(c * chunks) * num_candidates + k];
    for (int64_t j = 1; j < chunks; ++j) total = combine<kNorm>(total, partial[(c * chunks + j) * num_candidates + k]);
    err[k] = total;
  }
  const ChannelSpan span = load_span(mins, maxs, c);
  if (span_is_degenerate(span, symmetric)) {
    scale[c] = 1.0f;
    zero_point[c] = 0;
    return;
  }
  const int64_t best = pick_candidate(err, num_candidates);
  const AffineParams prm = candidate_params(span, symmetric, best + 1, num_candidates, qmin, qmax);
  scale[c] = prm.scale;
  zero_point[c] = static_cast<int32_t>(prm.zero_point);
}

template <ErrorNorm kNorm>
void launch(const Tensor& rows, const Tensor& mins, const Tensor& maxs, bool symmetric, int64_t K, float qmin,
            float qmax, float p, Tensor& errors, Tensor& scale, Tensor& zero_point) {
  const int64_t C = rows.size(0);
  const int64_t n = rows.size(1);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  TORCH_CHECK_VALUE(C <= 65535, "range_search: at most 65535 channels on CUDA, got ", C);
  Tensor partial = at::zeros({C, chunks, K}, rows.options().dtype(at::kDouble));
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(C));
  score_kernel<kNorm><<<grid, kThreads, 0, stream>>>(rows.const_data_ptr<float>(), n, chunks,
                                                     mins.const_data_ptr<float>(), maxs.const_data_ptr<float>(),
                                                     symmetric, K, qmin, qmax, p, partial.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int threads = 128;
  const int blocks = static_cast<int>((C + threads - 1) / threads);
  finalize_kernel<kNorm><<<blocks, threads, 0, stream>>>(
      partial.const_data_ptr<double>(), C, chunks, mins.const_data_ptr<float>(), maxs.const_data_ptr<float>(),
      symmetric, K, qmin, qmax, errors.mutable_data_ptr<double>(), scale.mutable_data_ptr<float>(),
      zero_point.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor, Tensor> range_search_cuda(const Tensor& x, int64_t quant_min, int64_t quant_max,
                                                     std::optional<int64_t> axis, bool symmetric,
                                                     int64_t num_candidates, double p) {
  const RangeSearchArgs args =
      check_range_search_args(x, quant_min, quant_max, axis, symmetric, num_candidates, p);
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor rows = channel_rows(x, axis);
  const int64_t C = rows.size(0);
  const int64_t K = num_candidates;
  auto [mins, maxs] = at::aminmax(rows, 1);
  check_finite_stats("range_search", mins, maxs);  // one host synchronisation
  mins = mins.contiguous();
  maxs = maxs.contiguous();
  Tensor errors = at::empty({C, K}, rows.options().dtype(at::kDouble));
  Tensor scale = at::empty({C}, rows.options().dtype(at::kFloat));
  Tensor zero_point = at::empty({C}, rows.options().dtype(at::kInt));
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  switch (args.norm) {
    case ErrorNorm::kL1:
      launch<ErrorNorm::kL1>(rows, mins, maxs, symmetric, K, qmin, qmax, args.p, errors, scale, zero_point);
      break;
    case ErrorNorm::kL2:
      launch<ErrorNorm::kL2>(rows, mins, maxs, symmetric, K, qmin, qmax, args.p, errors, scale, zero_point);
      break;
    case ErrorNorm::kLinf:
      launch<ErrorNorm::kLinf>(rows, mins, maxs, symmetric, K, qmin, qmax, args.p, errors, scale, zero_point);
      break;
    default:
      launch<ErrorNorm::kLp>(rows, mins, maxs, symmetric, K, qmin, qmax, args.p, errors, scale, zero_point);
  }
  if (!axis.has_value()) errors = errors.view({K});
  return {scale, zero_point, errors};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CUDA, m) {
  m.impl("range_search", &range_search_cuda);
}

}  // namespace pyquant::ops
