// CPU implementations of the fake-quant ops: argument checks, allocation, and at::parallel_for over
// fixed blocks of memory; the arithmetic lives in fake_quant_kernel.cpp (one build per CPU variant).
#include <ATen/ATen.h>

#include <cmath>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>

#include "../fake_quant.h"
#include "fake_quant_kernel.h"

namespace pyquant::ops {
namespace {

using at::Tensor;
using cpu::ChannelTable;
using cpu::FakeQuantKernels;

// Elementwise work is split into blocks of this many elements (a multiple of 64, so each mask word
// has one writer); tensors below kParallelGrain elements stay on the calling thread.
constexpr int64_t kBlock = 4096;
constexpr int64_t kParallelGrain = 32768;
// Reductions use fixed blocks too, so the summation order -- and the result -- does not depend on
// the number of threads.
constexpr int64_t kReduceBlock = 1 << 16;
// Outputs above this size bypass the cache (non-temporal stores); smaller ones stay cached for the
// consumer. Half of a typical server L3.
constexpr int64_t kStreamBytes = int64_t{16} << 20;

bool stream_stores_for(const Tensor& out) {
  return out.numel() * static_cast<int64_t>(out.element_size()) >= kStreamBytes;
}

const FakeQuantKernels& kernels() {
  static const FakeQuantKernels& table = PYQ_SELECT_ISA_TABLE(fake_quant_kernels);
  return table;
}

ChannelTable make_table(const HostParams& p, int64_t quant_min, int64_t quant_max, const ChannelLayout& layout,
                        const Tensor& out) {
  return ChannelTable{p.scale.data(),
                      p.inv_scale.data(),
                      p.zero_point.data(),
                      static_cast<float>(quant_min),
                      static_cast<float>(quant_max),
                      layout.channels,
                      layout.inner,
                      stream_stores_for(out)};
}

// Runs the forward kernel over a dense x into y (same strides).
void run_forward(const Tensor& xd, Tensor& y, uint64_t* mask, const HostParams& params, ZeroPointMode mode,
                 int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis) {
  const int64_t numel = xd.numel();
  if (numel == 0) return;
  const ChannelTable table = make_table(params, quant_min, quant_max, channel_layout(xd, axis), y);
  const void* x_ptr = xd.const_data_ptr();
  void* y_ptr = y.mutable_data_ptr();
  const auto dtype = xd.scalar_type();
  const auto& k = kernels();
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kParallelGrain / kBlock, [&](int64_t b0, int64_t b1) {
    k.forward(dtype, mode, x_ptr, y_ptr, mask, b0 * kBlock, std::min(b1 * kBlock, numel), table);
  });
}

std::tuple<Tensor, Tensor> fake_quant_cpu(const Tensor& x, const Tensor& scale, const Tensor& zero_point,
                                          int64_t quant_min, int64_t quant_max, std::optional<int64_t> axis,
                                          bool compute_mask) {
  const ZeroPointMode mode =
      check_fake_quant_args("fake_quant", x, scale, zero_point, quant_min, quant_max, axis);
  const HostParams params = host_params("fake_quant", scale, zero_point, quant_min, quant_max, false);
  const Tensor xd = dense_view(x);
  Tensor y = empty_output_like(xd);
  Tensor mask = at::empty({compute_mask ? mask_bytes(xd.numel()) : 0}, x.options().dtype(at::kByte));
  run_forward(xd, y, compute_mask ? reinterpret_cast<uint64_t*>(mask.mutable_data_ptr()) : nullptr, params, mode,
              quant_min, quant_max, axis);
  return {y, mask};
}

void fake_quant_out_cpu(const Tensor& x, const Tensor& scale, const Tensor& zero_point, int64_t quant_min,
                        int64_t quant_max, std::optional<int64_t> axis, const Tensor& out) {
  const ZeroPointMode mode =
      check_fake_quant_args("fake_quant", x, scale, zero_point, quant_min, quant_max, axis);
  check_out(x, out);
  const HostParams params = host_params("fake_quant", scale, zero_point, quant_min, quant_max, false);
  const Tensor xd = dense_view(x);
  if (out.is_non_overlapping_and_dense() && out.strides() == xd.strides()) {
    // Writing straight into out is safe even when out is x: each element is read before it is written.
    at::assert_no_partial_overlap(out, xd);
    Tensor out_alias = out;
    run_forward(xd, out_alias, nullptr, params, mode, quant_min, quant_max, axis);
  } else {
    Tensor tmp = at::empty_like(xd);
    run_forward(xd, tmp, nullptr, params, mode, quant_min, quant_max, axis);
    out.copy_(tmp);
  }
}

Tensor fake_quant_mask_backward_cpu(const Tensor& grad, const Tensor& mask) {
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kByte && mask.dim() == 1 && mask.is_contiguous(),
                    "fake_quant backward: mask must be the contiguous uint8 bit mask returned by fake_quant");
  TORCH_CHECK_VALUE(mask.numel() == mask_bytes(grad.numel()),
                    "fake_quant backward: mask holds ", mask.numel(), " bytes but grad has ", grad.numel(),
                    " elements (was fake_quant called with compute_mask=True?)");
  TORCH_CHECK_VALUE(grad.is_non_overlapping_and_dense(),
                    "fake_quant backward: grad must be laid out like the forward output");
  Tensor dx = empty_output_like(grad);
  const int64_t numel = grad.numel();
  if (numel == 0) return dx;
  const void* g = grad.const_data_ptr();
  const auto* m = reinterpret_cast<const uint64_t*>(mask.const_data_ptr());
  void* d = dx.mutable_data_ptr();
  const auto dtype = grad.scalar_type();
  const auto& k = kernels();
  const bool stream = stream_stores_for(dx);
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kParallelGrain / kBlock, [&](int64_t b0, int64_t b1) {
    k.mask_backward(dtype, g, m, d, b0 * kBlock, std::min(b1 * kBlock, numel), stream);
  });
  return dx;
}

Tensor fake_quant_lsq_cpu(const Tensor& x, const Tensor& scale, const Tensor& zero_point, int64_t quant_min,
                          int64_t quant_max, std::optional<int64_t> axis, double grad_factor) {
  check_fake_quant_args("fake_quant_lsq", x, scale, zero_point, quant_min, quant_max, axis);
  TORCH_CHECK_VALUE(std::isfinite(grad_factor), "fake_quant_lsq: grad_factor must be finite, got ", grad_factor);
  const HostParams params = host_params("fake_quant_lsq", scale, zero_point, quant_min, quant_max, true);
  const Tensor xd = dense_view(x);
  Tensor y = empty_output_like(xd);
  run_forward(xd, y, nullptr, params, ZeroPointMode::kInteger, quant_min, quant_max, axis);
  return y;
}

// Runs a reduction backward kernel over fixed blocks and folds the per-block partial sums in block
// order. Returns the per-channel sums (num_sums rows of `channels` doubles).
template <typename Launch>
std::vector<double> reduce_blocks(int64_t numel, int64_t channels, int num_sums, Launch&& launch) {
  // Blocks of at least `channels` elements bound the partial buffer by numel + channels per sum.
  const int64_t block = std::max<int64_t>(kReduceBlock, ((channels + 63) / 64) * 64);
  const int64_t blocks = (numel + block - 1) / block;
  std::vector<double> partial(static_cast<size_t>(blocks * channels * num_sums), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* part = partial.data() + b * channels * num_sums;
      launch(b * block, std::min((b + 1) * block, numel), part, part + channels);
    }
  });
  std::vector<double> total(static_cast<size_t>(channels * num_sums), 0.0);
  for (int64_t b = 0; b < blocks; ++b) {
    const double* part = partial.data() + b * channels * num_sums;
    for (int64_t i = 0; i < channels * num_sums; ++i) total[i] += part[i];
  }
  return total;
}

Tensor channel_sums_to_tensor(const double* sums, double factor, const Tensor& like) {
  Tensor out = at::empty({like.numel()}, like.options().dtype(at::kFloat).device(at::kCPU));
  float* o = out.data_ptr<float>();
  for (int64_t c = 0; c < like.numel(); ++c) o[c] = static_cast<float>(sums[c] * factor);
  return out.view(like.sizes()).to(like.scalar_type());
}

// d scale and d zero_point from the per-channel sums (2 rows of layout.channels) of an LSQ backward,
// times grad_factor, shaped like the parameters. Per-channel layouts with a size-1 channel dimension
// reduce into one sum; it is spread.
std::pair<Tensor, Tensor> lsq_param_grads(const std::vector<double>& sums, const ChannelLayout& layout,
                                          const Tensor& scale, const Tensor& zero_point, double grad_factor) {
  std::vector<double> ds(scale.numel()), dz(scale.numel());
  for (int64_t c = 0; c < scale.numel(); ++c) {
    ds[c] = sums[layout.channels == 1 ? 0 : c];
    dz[c] = sums[layout.channels + (layout.channels == 1 ? 0 : c)];
  }
  Tensor dscale = channel_sums_to_tensor(ds.data(), grad_factor, scale);
  Tensor dzero = channel_sums_to_tensor(
      dz.data(), grad_factor, at::isFloatingType(zero_point.scalar_type()) ? zero_point : zero_point.to(at::kFloat));
  return {dscale, dzero};
}

std::tuple<Tensor, Tensor, Tensor> fake_quant_lsq_backward_cpu(const Tensor& grad, const Tensor& x,
                                                               const Tensor& scale, const Tensor& zero_point,
                                                               int64_t quant_min, int64_t quant_max,
                                                               std::optional<int64_t> axis, double grad_factor) {
  check_fake_quant_args("fake_quant_lsq", x, scale, zero_point, quant_min, quant_max, axis);
  check_grad("fake_quant_lsq", grad, x);
  const HostParams params = host_params("fake_quant_lsq", scale, zero_point, quant_min, quant_max, true);
  BackwardOperands o = backward_operands(grad, x, axis);
  const ChannelLayout layout = o.layout;
  const ChannelTable table = make_table(params, quant_min, quant_max, layout, o.dx);
  const auto& k = kernels();
  const std::vector<double> sums =
      reduce_blocks(o.x.numel(), layout.channels, 2, [&](int64_t begin, int64_t end, double* ds, double* dz) {
        k.lsq_backward(o.x.scalar_type(), o.x.const_data_ptr(), o.grad.const_data_ptr(), o.dx.mutable_data_ptr(),
                       begin, end, table, ds, dz);
      });
  auto [dscale, dzero] = lsq_param_grads(sums, layout, scale, zero_point, grad_factor);
  return {o.dx, dscale, dzero};
}

// LSQ with QDrop. The mask is a function of the row-major flat index (qdrop_math.h) and the kernels
// walk memory, so they run on a contiguous x (x itself in the usual case); the result is then laid out
// like x, as the other fake-quant ops lay theirs out and the fake kernels (empty_like) say.
Tensor fake_quant_lsq_qdrop_cpu(const Tensor& x, const Tensor& scale, const Tensor& zero_point, int64_t quant_min,
                                int64_t quant_max, std::optional<int64_t> axis, double grad_factor, double drop_p,
                                int64_t seed) {
  constexpr const char* op = "fake_quant_lsq_qdrop";
  check_fake_quant_args(op, x, scale, zero_point, quant_min, quant_max, axis);
  TORCH_CHECK_VALUE(std::isfinite(grad_factor), op, ": grad_factor must be finite, got ", grad_factor);
  const QdropParams qdrop = check_qdrop_args(op, drop_p, seed);
  const HostParams params = host_params(op, scale, zero_point, quant_min, quant_max, true);
  const Tensor xc = x.contiguous();
  Tensor y = empty_output_like(xc);
  const int64_t numel = xc.numel();
  const ChannelTable table = make_table(params, quant_min, quant_max, channel_layout(xc, axis), y);
  const void* x_ptr = xc.const_data_ptr();
  void* y_ptr = y.mutable_data_ptr();
  const auto dtype = xc.scalar_type();
  const auto& k = kernels();
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kParallelGrain / kBlock, [&](int64_t b0, int64_t b1) {
    k.lsq_qdrop_forward(dtype, x_ptr, y_ptr, b0 * kBlock, std::min(b1 * kBlock, numel), table, qdrop);
  });
  return in_layout_of(y, x);
}

std::tuple<Tensor, Tensor, Tensor> fake_quant_lsq_qdrop_backward_cpu(const Tensor& grad, const Tensor& x,
                                                                     const Tensor& scale, const Tensor& zero_point,
                                                                     int64_t quant_min, int64_t quant_max,
                                                                     std::optional<int64_t> axis, double grad_factor,
                                                                     double drop_p, int64_t seed) {
  constexpr const char* op = "fake_quant_lsq_qdrop";
  check_fake_quant_args(op, x, scale, zero_point, quant_min, quant_max, axis);
  check_grad(op, grad, x);
  TORCH_CHECK_VALUE(std::isfinite(grad_factor), op, ": grad_factor must be finite, got ", grad_factor);
  const QdropParams qdrop = check_qdrop_args(op, drop_p, seed);
  const HostParams params = host_params(op, scale, zero_point, quant_min, quant_max, true);
  const Tensor xc = x.contiguous();
  const Tensor gc = grad.contiguous();
  Tensor dx = empty_output_like(xc);
  const ChannelLayout layout = channel_layout(xc, axis);
  const ChannelTable table = make_table(params, quant_min, quant_max, layout, dx);
  const auto& k = kernels();
  const std::vector<double> sums =
      reduce_blocks(xc.numel(), layout.channels, 2, [&](int64_t begin, int64_t end, double* ds, double* dz) {
        k.lsq_qdrop_backward(xc.scalar_type(), xc.const_data_ptr(), gc.const_data_ptr(), dx.mutable_data_ptr(),
                             begin, end, table, qdrop, ds, dz);
      });
  auto [dscale, dzero] = lsq_param_grads(sums, layout, scale, zero_point, grad_factor);
  return {in_layout_of(dx, x), dscale, dzero};
}

// PACT constants: for the forward, scale = alpha / n; for the backward, alpha itself.
HostParams pact_params(const Tensor& alpha, int64_t bits, bool alpha_itself) {
  const int64_t levels = (int64_t{1} << bits) - 1;
  const Tensor zero = at::zeros({alpha.numel()}, alpha.options().dtype(at::kInt).device(at::kCPU));
  HostParams p = host_params("fake_quant_pact", alpha, zero, 0, levels, false, "alpha");
  if (!alpha_itself) {
    for (size_t c = 0; c < p.scale.size(); ++c) {
      p.scale[c] = pact_scale(p.scale[c], static_cast<float>(levels));
      p.inv_scale[c] = 1.0f / p.scale[c];
      TORCH_CHECK_VALUE(std::isfinite(p.inv_scale[c]), "fake_quant_pact: alpha / (2^bits - 1) must have a finite "
                        "reciprocal, got alpha = ", p.scale[c] * static_cast<float>(levels));
    }
  }
  return p;
}

Tensor fake_quant_pact_cpu(const Tensor& x, const Tensor& alpha, int64_t bits, std::optional<int64_t> axis) {
  const int64_t levels = check_pact_args("fake_quant_pact", x, alpha, bits, axis);
  const HostParams params = pact_params(alpha, bits, false);
  const Tensor xd = dense_view(x);
  Tensor y = empty_output_like(xd);
  run_forward(xd, y, nullptr, params, ZeroPointMode::kInteger, 0, levels, axis);
  return y;
}

std::tuple<Tensor, Tensor> fake_quant_pact_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& alpha,
                                                        int64_t bits, std::optional<int64_t> axis) {
  const int64_t levels = check_pact_args("fake_quant_pact", x, alpha, bits, axis);
  check_grad("fake_quant_pact", grad, x);
  const HostParams params = pact_params(alpha, bits, true);
  BackwardOperands o = backward_operands(grad, x, axis);
  const ChannelLayout layout = o.layout;
  const ChannelTable table = make_table(params, 0, levels, layout, o.dx);
  const auto& k = kernels();
  const std::vector<double> sums =
      reduce_blocks(o.x.numel(), layout.channels, 1, [&](int64_t begin, int64_t end, double* da, double*) {
        k.pact_backward(o.x.scalar_type(), o.x.const_data_ptr(), o.grad.const_data_ptr(), o.dx.mutable_data_ptr(),
                        begin, end, table, da);
      });
  std::vector<double> da(alpha.numel());
  for (int64_t c = 0; c < alpha.numel(); ++c) da[c] = sums[layout.channels == 1 ? 0 : c];
  return {o.dx, channel_sums_to_tensor(da.data(), 1.0, alpha)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CPU, m) {
  m.impl("fake_quant", &fake_quant_cpu);
  m.impl("fake_quant_out", &fake_quant_out_cpu);
  m.impl("fake_quant_mask_backward", &fake_quant_mask_backward_cpu);
  m.impl("fake_quant_lsq", &fake_quant_lsq_cpu);
  m.impl("fake_quant_lsq_backward", &fake_quant_lsq_backward_cpu);
  m.impl("fake_quant_lsq_qdrop", &fake_quant_lsq_qdrop_cpu);
  m.impl("fake_quant_lsq_qdrop_backward", &fake_quant_lsq_qdrop_backward_cpu);
  m.impl("fake_quant_pact", &fake_quant_pact_cpu);
  m.impl("fake_quant_pact_backward", &fake_quant_pact_backward_cpu);
}

}  // namespace pyquant::ops
