// CUDA kernel of the histogram op: grid (blocks per channel, channels); each block counts into
// shared-memory privatised bins (when they fit) with calib_math.h histogram_bin, then adds its
// non-zero bins to the global int64 counts. Counts are integers: the result is exact and
// independent of scheduling.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "../histogram.h"
#include "ops/fake_quant/fake_quant.h"
#include "pyquant/calib_math.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int64_t kSharedBins = 12 * 1024;  // 48 KiB of 32-bit counters

template <typename T>
__global__ void histogram_kernel(const T* __restrict__ x, int64_t channels, int64_t inner, int64_t per_channel,
                                 const float* __restrict__ lo, const float* __restrict__ hi, int64_t bins,
                                 bool use_shared, unsigned long long* __restrict__ counts,
                                 unsigned long long* __restrict__ nonfinite) {
  extern __shared__ uint32_t shared_bins[];
  const int64_t c = blockIdx.y;
  if (use_shared) {
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) shared_bins[b] = 0u;
    __syncthreads();
  }
  const float l = lo[c];
  const float h = hi[c];
  const float nb = static_cast<float>(bins);
  unsigned long long* out = counts + c * bins;
  unsigned long long bad = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < per_channel; e += stride) {
    const int64_t o = e / inner;
    const int64_t i = e - o * inner;
    const float v = static_cast<float>(x[(o * channels + c) * inner + i]);
    if (!isfinite(v)) {
      ++bad;
      continue;
    }
    const int64_t b = histogram_bin(v, l, h, nb);
    if (use_shared) {
      atomicAdd(&shared_bins[b], 1u);
    } else {
      atomicAdd(&out[b], 1ull);
    }
  }
  if (bad != 0) atomicAdd(nonfinite, bad);
  if (use_shared) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
      const uint32_t v = shared_bins[b];
      if (v != 0u) atomicAdd(&out[b], static_cast<unsigned long long>(v));
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> histogram_cuda(const Tensor& x, int64_t bins, const std::optional<Tensor>& lo,
                                                   const std::optional<Tensor>& hi, std::optional<int64_t> axis,
                                                   const std::optional<Tensor>& counts) {
  const HistogramArgs args = check_histogram_args(x, bins, lo, hi, axis, counts);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [lo_t, hi_t] = histogram_range(x, args, axis, lo, hi);
  const int64_t C = args.channels;
  TORCH_CHECK_VALUE(C <= 65535, "histogram: at most 65535 channels on CUDA, got ", C);
  Tensor data = dense_view(x);
  ChannelLayout layout = channel_layout(data, axis);
  if (C == 1) {
    layout = ChannelLayout{1, data.numel()};
  } else if (layout.channels != C) {
    data = data.movedim(at::maybe_wrap_dim(*axis, x.dim()), 0).contiguous();
    layout = ChannelLayout{C, data.numel() / C};
  }
  const int64_t per_channel = data.numel() / C;
  Tensor fresh = at::zeros({C, bins}, x.options().dtype(at::kLong));
  Tensor nonfinite = at::zeros({1}, x.options().dtype(at::kLong));
  const bool use_shared = bins <= kSharedBins;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (per_channel + kThreads * 16 - 1) / (kThreads * 16);
  const int64_t per_c = std::max<int64_t>(1, std::min<int64_t>(want, (sms * 8 + C - 1) / C));
  const dim3 grid(static_cast<unsigned>(per_c), static_cast<unsigned>(C));
  const size_t shmem = use_shared ? static_cast<size_t>(bins) * sizeof(uint32_t) : 0;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, data.scalar_type(), "pyquant_histogram", [&] {
    histogram_kernel<scalar_t><<<grid, kThreads, shmem, stream>>>(
        data.const_data_ptr<scalar_t>(), C, layout.inner, per_channel, lo_t.const_data_ptr<float>(),
        hi_t.const_data_ptr<float>(), bins, use_shared,
        reinterpret_cast<unsigned long long*>(fresh.mutable_data_ptr<int64_t>()),
        reinterpret_cast<unsigned long long*>(nonfinite.mutable_data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(nonfinite.item<int64_t>() == 0, "histogram: x must be finite, but it contains NaN or Inf");
  Tensor out = counts.has_value() ? fresh.view(counts->sizes()).add(*counts) : fresh;
  if (!axis.has_value()) out = out.view({bins});
  return {out, lo_t, hi_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CUDA, m) {
  m.impl("histogram", &histogram_cuda);
}

}  // namespace pyquant::ops
