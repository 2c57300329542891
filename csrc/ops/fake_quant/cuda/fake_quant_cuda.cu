// CUDA kernels of the fake-quant family. The per-element arithmetic is pyquant/quant_math.h, the
// same functions the CPU tests check; the memory view (channel = (i / inner) % channels) and the
// bit-packed mask layout (bit i of 32-bit word i / 32) match the CPU kernels.
//
// Parameters stay on the device and are read by the kernels (no host synchronisation). Invalid
// values cannot be rejected without a synchronisation, so they poison the output with NaN instead
// (make_affine_params); the CPU path raises ValueError for them.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

#include "../fake_quant.h"
#include "pyquant/qdrop_math.h"
#include "pyquant/quant_math.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kPerLane = 4;                    // consecutive elements per thread
constexpr int kGroup = 32 * kPerLane;          // elements per warp iteration
constexpr unsigned kFullMask = 0xffffffffu;
// Channels accumulated in shared memory by the reduction kernels; more go straight to global atomics.
constexpr int kSharedChannels = 2048;

// Where the quantizer constants come from.
enum class ParamKind : int {
  kAffineInt = 0,    // scale, integer zero-point (stored as float)
  kAffineFloat = 1,  // scale, float zero-point added before rounding
  kLsq = 2,          // scale, float zero-point rounded and clamped first
  kPact = 3,         // alpha: scale = alpha / qmax, zero-point 0
};

struct DeviceParams {
  const float* param;       // scale, or alpha for PACT
  const float* zero_point;  // unused for PACT
  float qmin;
  float qmax;
  int64_t channels;
  int64_t inner;
};

template <ParamKind kKind>
__device__ __forceinline__ AffineParams load_params(const DeviceParams& d, int64_t pos) {
  const int64_t c = d.channels == 1 ? 0 : (pos / d.inner) % d.channels;
  if (kKind == ParamKind::kPact) {
    return make_affine_params(pact_scale(d.param[c], d.qmax), 0.0f, d.qmin, d.qmax);
  }
  float zp = d.zero_point[c];
  if (kKind == ParamKind::kLsq) zp = round_zero_point(zp, d.qmin, d.qmax);
  return make_affine_params(d.param[c], zp, d.qmin, d.qmax);
}

template <typename T>
struct alignas(sizeof(T) * kPerLane) Pack {
  T v[kPerLane];
};

template <typename T>
__device__ __forceinline__ void load_lane(const T* p, int64_t base, int64_t n, bool vector_ok, float (&out)[kPerLane]) {
  if (vector_ok && base + kPerLane <= n) {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p + base);
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) out[k] = static_cast<float>(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) out[k] = base + k < n ? static_cast<float>(p[base + k]) : 0.0f;
  }
}

template <typename T>
__device__ __forceinline__ void store_lane(T* p, int64_t base, int64_t n, bool vector_ok, const float (&in)[kPerLane]) {
  if (vector_ok && base + kPerLane <= n) {
    Pack<T> pk;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) pk.v[k] = static_cast<T>(in[k]);
    *reinterpret_cast<Pack<T>*>(p + base) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      if (base + k < n) p[base + k] = static_cast<T>(in[k]);
    }
  }
}

// Grid-stride over groups of kGroup elements; a warp handles one group per iteration so the mask
// bits of a group can be gathered with shuffles (8 lanes x 4 bits = one 32-bit word).
// kQdrop (LSQ only, x contiguous: position = the mask's flat index): QDrop, pyquant/qdrop_math.h.
template <typename T, ParamKind kKind, bool kMask, bool kQdrop = false>
__global__ void forward_kernel(const T* __restrict__ x, T* __restrict__ y, uint32_t* __restrict__ mask, int64_t n,
                               DeviceParams d, bool vector_ok, QdropParams qdrop = QdropParams{}) {
  static_assert(!kQdrop || (kKind == ParamKind::kLsq && !kMask), "QDrop runs LSQ's forward only");
  QdropCursor cursor(qdrop);
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int64_t groups = (n + kGroup - 1) / kGroup;
  for (int64_t g = warp; g < groups; g += warps) {
    const int64_t base = g * kGroup + lane * kPerLane;
    float xv[kPerLane];
    float yv[kPerLane];
    load_lane(x, base, n, vector_ok, xv);
    uint32_t nibble = 0;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t pos = base + k;
      bool in_range = false;
      if (pos < n) {
        const AffineParams p = load_params<kKind>(d, pos);
        if (kQdrop) {
          yv[k] = lsq_qdrop_value(xv[k], p, cursor.keeps_fp(pos));
        } else {
          yv[k] = kKind == ParamKind::kAffineFloat ? fake_quant_value<ZeroPointMode::kFloat>(xv[k], p, &in_range)
                                                   : fake_quant_value<ZeroPointMode::kInteger>(xv[k], p, &in_range);
        }
      } else {
        yv[k] = 0.0f;
      }
      nibble |= static_cast<uint32_t>(in_range) << k;
    }
    store_lane(y, base, n, vector_ok, yv);
    if (kMask) {
      uint32_t word = nibble << (kPerLane * (lane & 7));
      word |= __shfl_xor_sync(kFullMask, word, 1);
      word |= __shfl_xor_sync(kFullMask, word, 2);
      word |= __shfl_xor_sync(kFullMask, word, 4);
      const int64_t first = g * kGroup + (lane >> 3) * 32;
      if ((lane & 7) == 0 && first < n) mask[first >> 5] = word;
    }
  }
}

template <typename T>
__global__ void mask_backward_kernel(const T* __restrict__ grad, const uint32_t* __restrict__ mask, T* __restrict__ dx,
                                     int64_t n, bool vector_ok) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kPerLane;
  for (int64_t base = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kPerLane; base < n;
       base += stride) {
    float g[kPerLane];
    load_lane(grad, base, n, vector_ok, g);
    const uint32_t bits = mask[base >> 5] >> (base & 31);  // base is a multiple of 4: no word straddle
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) g[k] = ((bits >> k) & 1u) ? g[k] : 0.0f;
    store_lane(dx, base, n, vector_ok, g);
  }
}

// LSQ (kSums = 2: d scale, d zero-point) or PACT (kSums = 1: d alpha) backward: dx elementwise and
// per-channel sums in shared memory, flushed with global atomics (float; order not deterministic).
// kQdrop (LSQ, contiguous x): elements QDrop keeps in FP32 pass grad and skip the atomics.
template <typename T, ParamKind kKind, int kSums, bool kQdrop = false>
__global__ void reduce_backward_kernel(const T* __restrict__ x, const T* __restrict__ grad, T* __restrict__ dx,
                                       int64_t n, DeviceParams d, float* __restrict__ sums,
                                       QdropParams qdrop = QdropParams{}) {
  static_assert(!kQdrop || kKind == ParamKind::kLsq, "QDrop runs LSQ's backward only");
  QdropCursor cursor(qdrop);
  __shared__ float shared[kSums * kSharedChannels];
  const bool use_shared = d.channels <= kSharedChannels;
  if (use_shared) {
    for (int i = threadIdx.x; i < kSums * d.channels; i += blockDim.x) shared[i] = 0.0f;
  }
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float xv = static_cast<float>(x[i]);
    const float gv = static_cast<float>(grad[i]);
    const int64_t c = d.channels == 1 ? 0 : (i / d.inner) % d.channels;
    float s0, s1 = 0.0f;
    if (kQdrop) {
      const LsqQdropGrad r = lsq_qdrop_grad(xv, gv, load_params<ParamKind::kLsq>(d, i), cursor.keeps_fp(i));
      dx[i] = static_cast<T>(r.dx);
      if (!r.contributes) continue;
      s0 = r.dscale;
      s1 = r.dzero_point;
    } else if (kKind == ParamKind::kPact) {
      const float alpha = d.param[c];
      dx[i] = static_cast<T>(pact_passes_x(xv, alpha) ? gv : 0.0f);
      s0 = pact_clipped_high(xv, alpha) ? gv : 0.0f;
    } else {
      const AffineParams p = load_params<ParamKind::kLsq>(d, i);
      const LsqTerms t = lsq_terms(xv, p);
      dx[i] = static_cast<T>(t.in_range ? gv : 0.0f);
      s0 = gv * t.dscale;
      s1 = gv * t.dzero_point;
    }
    if (use_shared) {
      atomicAdd(&shared[c], s0);
      if (kSums > 1) atomicAdd(&shared[kSharedChannels + c], s1);
    } else {
      atomicAdd(&sums[c], s0);
      if (kSums > 1) atomicAdd(&sums[d.channels + c], s1);
    }
  }
  __syncthreads();
  if (use_shared) {
    for (int c = threadIdx.x; c < d.channels; c += blockDim.x) {
      atomicAdd(&sums[c], shared[c]);
      if (kSums > 1) atomicAdd(&sums[d.channels + c], shared[kSharedChannels + c]);
    }
  }
}

int grid_for(int64_t work_items) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = (work_items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, sms * 8)));
}

bool aligned_for_vectors(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (t.element_size() * kPerLane) == 0;
}

#define PYQ_CUDA_DISPATCH(dtype, ...)                                                         \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "pyquant_fake_quant", __VA_ARGS__)

DeviceParams device_params(const Tensor& param_f, const Tensor& zp_f, int64_t quant_min, int64_t quant_max,
                           const ChannelLayout& layout) {
  return DeviceParams{param_f.const_data_ptr<float>(), zp_f.defined() ? zp_f.const_data_ptr<float>() : nullptr,
                      static_cast<float>(quant_min), static_cast<float>(quant_max), layout.channels, layout.inner};
}

Tensor as_float_vector(const Tensor& t) {
  return t.detach().to(at::kFloat).contiguous().view(-1);
}

template <ParamKind kKind, bool kQdrop = false>
void launch_forward(const Tensor& xd, Tensor& y, uint32_t* mask, const DeviceParams& d,
                    const QdropParams& qdrop = QdropParams{}) {
  const int64_t n = xd.numel();
  if (n == 0) return;
  const bool vector_ok = aligned_for_vectors(xd) && aligned_for_vectors(y);
  const int grid = grid_for((n + kPerLane - 1) / kPerLane);
  auto stream = at::cuda::getCurrentCUDAStream();
  PYQ_CUDA_DISPATCH(xd.scalar_type(), [&] {
    if constexpr (kQdrop) {
      forward_kernel<scalar_t, kKind, false, true><<<grid, kThreads, 0, stream>>>(
          xd.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), nullptr, n, d, vector_ok, qdrop);
    } else if (mask != nullptr) {
      forward_kernel<scalar_t, kKind, true><<<grid, kThreads, 0, stream>>>(
          xd.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), mask, n, d, vector_ok);
    } else {
      forward_kernel<scalar_t, kKind, false><<<grid, kThreads, 0, stream>>>(
          xd.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), nullptr, n, d, vector_ok);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void forward_affine(const Tensor& xd, Tensor& y, uint32_t* mask, const Tensor& scale, const Tensor& zero_point,
                    ZeroPointMode mode, int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis) {
  const Tensor s = as_float_vector(scale);
  const Tensor z = as_float_vector(zero_point);
  const DeviceParams d = device_params(s, z, quant_min, quant_max, channel_layout(xd, axis));
  if (mode == ZeroPointMode::kFloat) {
    launch_forward<ParamKind::kAffineFloat>(xd, y, mask, d);
  } else {
    launch_forward<ParamKind::kAffineInt>(xd, y, mask, d);
  }
}

std::tuple<Tensor, Tensor> fake_quant_cuda(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                                           int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis,
                                           bool compute_mask) {
  const ZeroPointMode mode = check_fake_quant_args("fake_quant", x, scale, zero_point, quant_min, quant_max, axis);
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor xd = dense_view(x);
  Tensor y = at::empty_like(xd);
  Tensor mask = at::empty({compute_mask ? mask_bytes(xd.numel()) : 0}, x.options().dtype(at::kByte));
  forward_affine(xd, y, compute_mask ? reinterpret_cast<uint32_t*>(mask.mutable_data_ptr()) : nullptr, scale,
                 zero_point, mode, quant_min, quant_max, axis);
  return {y, mask};
}

void fake_quant_out_cuda(const Tensor& x, const Tensor& scale, const Tensor& zero_point, int64_t quant_min,
                         int64_t quant_max, std::optional<int64_t> axis, const Tensor& out) {
  const ZeroPointMode mode = check_fake_quant_args("fake_quant", x, scale, zero_point, quant_min, quant_max, axis);
  check_out(x, out);
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor xd = dense_view(x);
  if (out.is_non_overlapping_and_dense() && out.strides() == xd.strides()) {
    at::assert_no_partial_overlap(out, xd);
    Tensor out_alias = out;
    forward_affine(xd, out_alias, nullptr, scale, zero_point, mode, quant_min, quant_max, axis);
  } else {
    Tensor tmp = at::empty_like(xd);
    forward_affine(xd, tmp, nullptr, scale, zero_point, mode, quant_min, quant_max, axis);
    out.copy_(tmp);
  }
}

Tensor fake_quant_mask_backward_cuda(const Tensor& grad, const Tensor& mask) {
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kByte && mask.dim() == 1 && mask.numel() == mask_bytes(grad.numel()),
                    "fake_quant backward: mask must be the uint8 bit mask returned by fake_quant for this grad");
  TORCH_CHECK_VALUE(grad.is_non_overlapping_and_dense(),
                    "fake_quant backward: grad must be laid out like the forward output");
  const c10::cuda::CUDAGuard guard(grad.device());
  Tensor dx = at::empty_like(grad);
  const int64_t n = grad.numel();
  if (n == 0) return dx;
  const bool vector_ok = aligned_for_vectors(grad) && aligned_for_vectors(dx);
  const int grid = grid_for((n + kPerLane - 1) / kPerLane);
  auto stream = at::cuda::getCurrentCUDAStream();
  PYQ_CUDA_DISPATCH(grad.scalar_type(), [&] {
    mask_backward_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), reinterpret_cast<const uint32_t*>(mask.const_data_ptr()),
        dx.mutable_data_ptr<scalar_t>(), n, vector_ok);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dx;
}

Tensor fake_quant_lsq_cuda(const Tensor& x, const Tensor& scale, const Tensor& zero_point, int64_t quant_min,
                           int64_t quant_max, std::optional<int64_t> axis, double grad_factor) {
  check_fake_quant_args("fake_quant_lsq", x, scale, zero_point, quant_min, quant_max, axis);
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor xd = dense_view(x);
  Tensor y = at::empty_like(xd);
  const Tensor s = as_float_vector(scale);
  const Tensor z = as_float_vector(zero_point);
  launch_forward<ParamKind::kLsq>(xd, y, nullptr, device_params(s, z, quant_min, quant_max, channel_layout(xd, axis)));
  return y;
}

template <ParamKind kKind, int kSums, bool kQdrop = false>
Tensor launch_reduce_backward(const Tensor& xd, const Tensor& gd, Tensor& dx, const DeviceParams& d,
                              const QdropParams& qdrop = QdropParams{}) {
  Tensor sums = at::zeros({kSums * d.channels}, xd.options().dtype(at::kFloat));
  const int64_t n = xd.numel();
  if (n == 0) return sums;
  auto stream = at::cuda::getCurrentCUDAStream();
  PYQ_CUDA_DISPATCH(xd.scalar_type(), [&] {
    reduce_backward_kernel<scalar_t, kKind, kSums, kQdrop><<<grid_for(n), kThreads, 0, stream>>>(
        xd.const_data_ptr<scalar_t>(), gd.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), n, d,
        sums.mutable_data_ptr<float>(), qdrop);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sums;
}

// The per-channel sums shaped like the parameter (one sum spread over a size-1 channel dimension).
Tensor sums_like(const Tensor& sums, int64_t offset, int64_t channels, const Tensor& like, double factor) {
  Tensor part = sums.narrow(0, offset, channels);
  if (channels == 1 && like.numel() != 1) part = part.expand({like.numel()});
  return (part * factor).reshape(like.sizes()).to(like.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor> fake_quant_lsq_backward_cuda(const Tensor& grad, const Tensor& x,
                                                                const Tensor& scale, const Tensor& zero_point,
                                                                int64_t quant_min, int64_t quant_max,
                                                                std::optional<int64_t> axis, double grad_factor) {
  check_fake_quant_args("fake_quant_lsq", x, scale, zero_point, quant_min, quant_max, axis);
  check_grad("fake_quant_lsq", grad, x);
  const c10::cuda::CUDAGuard guard(x.device());
  BackwardOperands o = backward_operands(grad, x, axis);
  const Tensor s = as_float_vector(scale);
  const Tensor z = as_float_vector(zero_point);
  const ChannelLayout layout = o.layout;
  const Tensor sums =
      launch_reduce_backward<ParamKind::kLsq, 2>(o.x, o.grad, o.dx, device_params(s, z, quant_min, quant_max, layout));
  const Tensor zp_like = at::isFloatingType(zero_point.scalar_type()) ? zero_point : zero_point.to(at::kFloat);
  return {o.dx, sums_like(sums, 0, layout.channels, scale, grad_factor),
          sums_like(sums, layout.channels, layout.channels, zp_like, grad_factor)};
}

// LSQ with QDrop: the mask lives on the row-major flat index, so the kernels run on a contiguous x and
// the result is laid out like x afterwards (as on the CPU; the fake kernels use empty_like).
Tensor fake_quant_lsq_qdrop_cuda(const Tensor& x, const Tensor& scale, const Tensor& zero_point, int64_t quant_min,
                                 int64_t quant_max, std::optional<int64_t> axis, double grad_factor, double drop_p,
                                 int64_t seed) {
  constexpr const char* op = "fake_quant_lsq_qdrop";
  check_fake_quant_args(op, x, scale, zero_point, quant_min, quant_max, axis);
  TORCH_CHECK_VALUE(std::isfinite(grad_factor), op, ": grad_factor must be finite, got ", grad_factor);
  const QdropParams qdrop = check_qdrop_args(op, drop_p, seed);
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor xc = x.contiguous();
  Tensor y = at::empty_like(xc);
  const Tensor s = as_float_vector(scale);
  const Tensor z = as_float_vector(zero_point);
  launch_forward<ParamKind::kLsq, true>(xc, y, nullptr,
                                        device_params(s, z, quant_min, quant_max, channel_layout(xc, axis)), qdrop);
  return in_layout_of(y, x);
}

std::tuple<Tensor, Tensor, Tensor> fake_quant_lsq_qdrop_backward_cuda(const Tensor& grad, const Tensor& x,
                                                                      const Tensor& scale, const Tensor& zero_point,
                                                                      int64_t quant_min, int64_t quant_max,
                                                                      std::optional<int64_t> axis, double grad_factor,
                                                                      double drop_p, int64_t seed) {
  constexpr const char* op = "fake_quant_lsq_qdrop";
  check_fake_quant_args(op, x, scale, zero_point, quant_min, quant_max, axis);
  check_grad(op, grad, x);
  TORCH_CHECK_VALUE(std::isfinite(grad_factor), op, ": grad_factor must be finite, got ", grad_factor);
  const QdropParams qdrop = check_qdrop_args(op, drop_p, seed);
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor xc = x.contiguous();
  const Tensor gc = grad.contiguous();
  Tensor dx = at::empty_like(xc);
  const Tensor s = as_float_vector(scale);
  const Tensor z = as_float_vector(zero_point);
  const ChannelLayout layout = channel_layout(xc, axis);
  const Tensor sums = launch_reduce_backward<ParamKind::kLsq, 2, true>(
      xc, gc, dx, device_params(s, z, quant_min, quant_max, layout), qdrop);
  const Tensor zp_like = at::isFloatingType(zero_point.scalar_type()) ? zero_point : zero_point.to(at::kFloat);
  return {in_layout_of(dx, x), sums_like(sums, 0, layout.channels, scale, grad_factor),
          sums_like(sums, layout.channels, layout.channels, zp_like, grad_factor)};
}

Tensor fake_quant_pact_cuda(const Tensor& x, const Tensor& alpha, int64_t bits, std::optional<int64_t> axis) {
  const int64_t levels = check_pact_args("fake_quant_pact", x, alpha, bits, axis);
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor xd = dense_view(x);
  Tensor y = at::empty_like(xd);
  const Tensor a = as_float_vector(alpha);
  launch_forward<ParamKind::kPact>(xd, y, nullptr, device_params(a, Tensor(), 0, levels, channel_layout(xd, axis)));
  return y;
}

std::tuple<Tensor, Tensor> fake_quant_pact_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& alpha,
                                                         int64_t bits, std::optional<int64_t> axis) {
  const int64_t levels = check_pact_args("fake_quant_pact", x, alpha, bits, axis);
  check_grad("fake_quant_pact", grad, x);
  const c10::cuda::CUDAGuard guard(x.device());
  BackwardOperands o = backward_operands(grad, x, axis);
  const Tensor a = as_float_vector(alpha);
  const Tensor sums =
      launch_reduce_backward<ParamKind::kPact, 1>(o.x, o.grad, o.dx, device_params(a, Tensor(), 0, levels, o.layout));
  return {o.dx, sums_like(sums, 0, o.layout.channels, alpha, 1.0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CUDA, m) {
  m.impl("fake_quant", &fake_quant_cuda);
  m.impl("fake_quant_out", &fake_quant_out_cuda);
  m.impl("fake_quant_mask_backward", &fake_quant_mask_backward_cuda);
  m.impl("fake_quant_lsq", &fake_quant_lsq_cuda);
  m.impl("fake_quant_lsq_backward", &fake_quant_lsq_backward_cuda);
  m.impl("fake_quant_lsq_qdrop", &fake_quant_lsq_qdrop_cuda);
  m.impl("fake_quant_lsq_qdrop_backward", &fake_quant_lsq_qdrop_backward_cuda);
  m.impl("fake_quant_pact", &fake_quant_pact_cuda);
  m.impl("fake_quant_pact_backward", &fake_quant_pact_backward_cuda);
}

}  // namespace pyquant::ops
