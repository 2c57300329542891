#pragma once
// Argument checking and memory-layout logic of the fake-quant ops, shared by every backend.
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "pyquant/qdrop_math.h"
#include "pyquant/quant_math.h"

namespace pyquant::ops {

// How a (dense) tensor is seen by the kernels: memory position i belongs to channel
// (i / inner) % channels. Per-tensor quantization is channels = 1, inner = numel.
struct ChannelLayout {
  int64_t channels;
  int64_t inner;
};

// Validates x / scale / zero_point / quant_min / quant_max / axis (dtype, device, shapes, ranges) and
// returns the zero-point mode. Raises ValueError / TypeError naming the argument.
// `op` names the public function in messages; `param_name` is "scale" or "alpha".
ZeroPointMode check_fake_quant_args(const char* op, const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                                    std::optional<int64_t> axis, const char* param_name = "scale");

// Checks a per-tensor or per-channel parameter tensor against x and axis (shape, dtype, device).
void check_param_shape(const char* op, const char* name, const at::Tensor& param, const at::Tensor& x,
                       std::optional<int64_t> axis);

// The layout of a non-overlapping, dense x for quantization along axis (or per tensor).
ChannelLayout channel_layout(const at::Tensor& dense_x, std::optional<int64_t> axis);

// x itself when non-overlapping and dense (contiguous, channels_last, any permutation), else a
// dense copy in x's suggested memory format. Kernels walk memory linearly.
at::Tensor dense_view(const at::Tensor& x);

// `t` laid out exactly like `like` (same strides), copying only when it is not already.
at::Tensor same_layout_as(const at::Tensor& t, const at::Tensor& like);

// t (a kernel's contiguous result over x.contiguous()) laid out as torch.empty_like(x) would be: x's
// strides when x is non-overlapping and dense, else x's suggested memory format. Copies only when the
// layouts differ.
at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& x);

// A fresh CPU tensor like `like` (same strides) for a kernel to fill. Large ones are hinted to
// transparent huge pages before their first touch (see fake_quant.cpp).
at::Tensor empty_output_like(const at::Tensor& like);

// Bytes of the bit-packed mask of n elements: whole 64-bit words.
int64_t mask_bytes(int64_t numel);

// Per-channel constants on the host (float32), validated: scale finite and > 0 with a finite
// reciprocal and a finite scale * (quant_max - quant_min) (PACT's alpha: the reciprocal only), zero-point in
// [quant_min, quant_max] (float zero-points rounded first when lsq_rounding, as LSQ does). Raises ValueError naming the argument.
struct HostParams {
  std::vector<float> scale;
  std::vector<float> inv_scale;
  std::vector<float> zero_point;
};
HostParams host_params(const char* op, const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min,
                       int64_t quant_max, bool lsq_rounding, const char* param_name = "scale");

// Checks the out= buffer of fake_quant_out against x (shape, dtype, device, no internal overlap).
void check_out(const at::Tensor& x, const at::Tensor& out);

// PACT: validates bits and alpha (shape, dtype, device) and returns the number of levels 2^bits - 1.
int64_t check_pact_args(const char* op, const at::Tensor& x, const at::Tensor& alpha, int64_t bits,
                        std::optional<int64_t> axis);

// The tensors of a reduction backward (LSQ, PACT): x densified, grad in x's layout, dx allocated.
struct BackwardOperands {
  at::Tensor x;
  at::Tensor grad;
  at::Tensor dx;
  ChannelLayout layout;
};
BackwardOperands backward_operands(const at::Tensor& grad, const at::Tensor& x, std::optional<int64_t> axis);

// QDrop's drop_p (in [0, 1]) and seed (in [0, 2^63)), checked; the constants of pyquant/qdrop_math.h.
QdropParams check_qdrop_args(const char* op, double drop_p, int64_t seed);

// Checks a gradient tensor against the forward input.
void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& x);

}  // namespace pyquant::ops
