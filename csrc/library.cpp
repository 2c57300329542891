// Every pyquant op schema, declared once. Backends register kernels with TORCH_LIBRARY_IMPL in
// csrc/ops/<op>/{cpu,cuda}/; autograd and fake (meta) kernels are registered in pyquant/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(pyquant, m) {
  // Affine fake quantization; the second output is the straight-through mask, bit-packed in the
  // memory order of the first output (empty unless compute_mask).
  m.def(
      "fake_quant(Tensor x, Tensor scale, Tensor zero_point, int quant_min, int quant_max, int? axis=None, "
      "bool compute_mask=False) -> (Tensor, Tensor)");
  m.def(
      "fake_quant_out(Tensor x, Tensor scale, Tensor zero_point, int quant_min, int quant_max, int? axis, "
      "Tensor(a!) out) -> ()");
  m.def("fake_quant_mask_backward(Tensor grad, Tensor mask) -> Tensor");
  // LSQ (Esser et al. 2020): learnable scale and zero-point.
  m.def(
      "fake_quant_lsq(Tensor x, Tensor scale, Tensor zero_point, int quant_min, int quant_max, int? axis=None, "
      "float grad_factor=1.0) -> Tensor");
  m.def(
      "fake_quant_lsq_backward(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, int quant_min, "
      "int quant_max, int? axis, float grad_factor) -> (Tensor, Tensor, Tensor)");
  // LSQ with QDrop (Wei et al. 2022) fused in: element i (row-major flat index) passes through in FP32
  // -- y = x, dx = grad, nothing to d scale / d zero_point -- when u(seed, i) < drop_p, with u the
  // counter-based uniform of pyquant/qdrop_math.h; LSQ elsewhere. The backward recomputes the mask
  // from the seed.
  m.def(
      "fake_quant_lsq_qdrop(Tensor x, Tensor scale, Tensor zero_point, int quant_min, int quant_max, int? axis, "
      "float grad_factor, float drop_p, int seed) -> Tensor");
  m.def(
      "fake_quant_lsq_qdrop_backward(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, int quant_min, "
      "int quant_max, int? axis, float grad_factor, float drop_p, int seed) -> (Tensor, Tensor, Tensor)");
  // PACT (Choi et al. 2018): learnable clipping level alpha.
  m.def("fake_quant_pact(Tensor x, Tensor alpha, int bits, int? axis=None) -> Tensor");
  m.def("fake_quant_pact_backward(Tensor grad, Tensor x, Tensor alpha, int bits, int? axis) -> (Tensor, Tensor)");
  // BatchNorm-statistic loss (ZeroQ / DSG / GDFQ): one pass over x; returns the loss and the saved
  // per-statistic [mean, var, coef_a, coef_b] (float64, [N*C or C, 4]) that the backward needs.
  m.def(
      "bn_stat_loss(Tensor x, Tensor running_mean, Tensor running_var, float eps=1e-05, bool per_sample=False, "
      "bool unbiased=False, Tensor? mean_margin=None, Tensor? std_margin=None, Tensor? sample_weight=None, "
      "bool match_var=False) -> (Tensor, Tensor)");
  m.def("bn_stat_loss_backward(Tensor grad, Tensor x, Tensor stats, bool per_sample) -> Tensor");

  // Clipping-range search (calibration): K candidate clips per channel scored in one pass over x;
  // returns the best scale [C] (float32), zero-point [C] (int32) and the error table [C, K] (float64;
  // [K] per tensor). Contract in DESIGN.md section 6.
  m.def(
      "range_search(Tensor x, int quant_min, int quant_max, int? axis=None, bool symmetric=True, "
      "int num_candidates=100, float p=2.0) -> (Tensor, Tensor, Tensor)");
  // Histogram with `bins` bins over [lo, hi) per tensor ([bins]) or per channel ([C, bins]); values
  // outside go to the edge bins; lo/hi (1 or C values) default to the data's min/max; counts, when
  // given, are added to. Returns (counts int64, lo float32, hi float32) with the range used.
  m.def(
      "histogram(Tensor x, int bins, Tensor? lo=None, Tensor? hi=None, int? axis=None, Tensor? counts=None) "
      "-> (Tensor, Tensor, Tensor)");
  // SQuant data-free rounding (Guo et al. 2022): integer codes (as floats of x's dtype) of the scaled
  // weight x [O, I, *kernel] after the kernel-wise and channel-wise flips; not differentiable.
  m.def(
      "squant_round(Tensor x, int quant_min, int quant_max, bool kernel_stage=True, bool channel_stage=True) "
      "-> Tensor");

  // Real int8 (issue 6; contracts in DESIGN.md section 6). pack_int8_weight turns symmetric int8
  // weights ([N, K] linear or [N, C/groups, kh, kw] conv) into the kernels' layout (a 1-d int8 tensor
  // with a self-describing header) and returns it with the per-column sums used for the activation
  // zero-point term. int8_linear / int8_conv2d: u8 activations x s8 weights, int32 accumulation,
  // per-channel weight scales, bias, ReLU, float32 output or uint8 requantized to (out_scale,
  // out_zero_point). `kernel` ("auto", "vnni", "avx2", "scalar") picks the CPU path (tests).
  m.def("pack_int8_weight(Tensor w_q, int groups=1) -> (Tensor, Tensor)");
  m.def(
      "int8_linear(Tensor x_q, float x_scale, int x_zero_point, Tensor w_packed, Tensor w_col_sum, Tensor w_scale, "
      "Tensor? bias=None, float? out_scale=None, int? out_zero_point=None, bool relu=False, str kernel=\"auto\") "
      "-> Tensor");
  m.def(
      "int8_conv2d(Tensor x_q, float x_scale, int x_zero_point, Tensor w_packed, Tensor w_col_sum, Tensor w_scale, "
      "int[2] kernel_size, Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, "
      "float? out_scale=None, int? out_zero_point=None, bool relu=False, str kernel=\"auto\", "
      "Tensor? residual=None, float residual_scale=1.0, int residual_zero_point=0) -> Tensor");
  // int8_conv2d's residual (conv -> add -> ReLU fused): uint8 codes of the output's shape on
  // (residual_scale, residual_zero_point), dequantized and added to the float32 conv output before the
  // ReLU and the requantization (pyquant/requantize.h).
  // Requantizing add of two uint8 code tensors of one shape (residual adds of converted networks):
  // clamp(round_half_even(((a - za) * sa + (b - zb) * sb) * (1 / s_out)) + z_out, quant_min, quant_max),
  // float32 as in pyquant/requantize.h; the output keeps a_q's memory layout.
  m.def(
      "int8_add(Tensor a_q, float a_scale, int a_zero_point, Tensor b_q, float b_scale, int b_zero_point, "
      "float out_scale, int out_zero_point, int quant_min=0, int quant_max=255) -> Tensor");
}
