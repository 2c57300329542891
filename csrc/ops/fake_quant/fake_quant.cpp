#include "fake_quant.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyquant::ops {

namespace {

// The float32 arithmetic of quant_math.h is exact while levels stay within 2^24; 17 bits of range
// covers every signed or unsigned grid up to 16 bits.
constexpr int64_t kLevelLimit = int64_t{1} << 17;

bool is_supported_input_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_param_shape(const char* op, const char* name, const at::Tensor& param, const at::Tensor& x,
                       std::optional<int64_t> axis) {
  TORCH_CHECK_VALUE(param.device() == x.device(), op, ": ", name, " must be on the same device as x (", x.device(),
                    "), got ", param.device());
  TORCH_CHECK_VALUE(param.dim() <= 1, op, ": ", name, " must be a 0-d or 1-d tensor, got shape ", param.sizes());
  if (!axis.has_value()) {
    TORCH_CHECK_VALUE(param.numel() == 1, op, ": per-tensor quantization (axis=None) needs one ", name,
                      ", got ", param.numel(), " values");
  } else {
    const int64_t channels = x.size(*axis);
    TORCH_CHECK_VALUE(param.numel() == channels, op, ": ", name, " must have x.shape[axis] = ", channels,
                      " elements for axis=", *axis, ", got ", param.numel());
  }
}

ZeroPointMode check_fake_quant_args(const char* op, const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                                    std::optional<int64_t> axis, const char* param_name) {
  TORCH_CHECK_TYPE(is_supported_input_dtype(x.scalar_type()), op,
                   ": x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), op, ": ", param_name,
                   " must be a floating-point tensor, got ", scale.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(zero_point.scalar_type()) ||
                       at::isIntegralType(zero_point.scalar_type(), /*includeBool=*/false),
                   op, ": zero_point must be an integer or floating-point tensor, got ", zero_point.scalar_type());
  TORCH_CHECK_VALUE(quant_min < quant_max, op, ": quant_min must be < quant_max, got quant_min=", quant_min,
                    ", quant_max=", quant_max);
  TORCH_CHECK_VALUE(quant_min >= -kLevelLimit && quant_max <= kLevelLimit, op,
                    ": quant_min and quant_max must lie in [-2^17, 2^17] (grids up to 16 bits), got [", quant_min,
                    ", ", quant_max, "]");
  if (axis.has_value()) {
    TORCH_CHECK_VALUE(x.dim() > 0 && *axis >= -x.dim() && *axis < x.dim(), op, ": axis=", *axis,
                      " is out of range for x with ", x.dim(), " dimensions");
  }
  const std::optional<int64_t> norm_axis =
      axis.has_value() ? std::optional<int64_t>(at::maybe_wrap_dim(*axis, x.dim())) : std::nullopt;
  check_param_shape(op, param_name, scale, x, norm_axis);
  check_param_shape(op, "zero_point", zero_point, x, norm_axis);
  return at::isFloatingType(zero_point.scalar_type()) ? ZeroPointMode::kFloat : ZeroPointMode::kInteger;
}

ChannelLayout channel_layout(const at::Tensor& dense_x, std::optional<int64_t> axis) {
  const int64_t numel = dense_x.numel();
  if (!axis.has_value()) return {1, std::max<int64_t>(numel, 1)};
  const int64_t a = at::maybe_wrap_dim(*axis, dense_x.dim());
  const int64_t channels = dense_x.size(a);
  if (channels <= 1) return {1, std::max<int64_t>(numel, 1)};
  // In a non-overlapping dense tensor, the dimensions with smaller strides exactly tile stride(a).
  return {channels, dense_x.stride(a)};
}

at::Tensor dense_view(const at::Tensor& x) {
  // The same layout torch.empty_like(x) picks for a non-dense x, so fake kernels agree.
  return x.is_non_overlapping_and_dense() ? x : x.contiguous(x.suggest_memory_format());
}

at::Tensor same_layout_as(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_strided(like.sizes(), like.strides(), t.options());
  out.copy_(t);
  return out;
}

at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& x) {
  if (x.is_non_overlapping_and_dense()) return same_layout_as(t, x);
  return t.contiguous(x.suggest_memory_format());
}

namespace {

// Outputs from this size up are worth a madvise call.
constexpr int64_t kHugePageHintBytes = int64_t{4} << 20;
constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

bool huge_page_hints_enabled() {
  static const bool enabled = std::getenv("PYQUANT_NO_HUGEPAGE_HINT") == nullptr;
  return enabled;
}

// A fresh large allocation is untouched memory: every 4 KiB page faults on its first write, and for a
// 51 MB activation those ~12,500 faults cost more than the kernel itself (a plain clone() pays them
// too). Asking for transparent huge pages on the 2 MiB-aligned interior before the kernel writes it
// cuts the faults ~500-fold. It is only a hint: where THP is disabled the call fails and nothing
// changes; on memory the allocator reused it is harmless.
void hint_huge_pages(void* data, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(nbytes)) & ~(kHugePage - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)nbytes;
#endif
}

}  // namespace

at::Tensor empty_output_like(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like);
  const int64_t nbytes = out.numel() * static_cast<int64_t>(out.element_size());
  if (out.is_cpu() && nbytes >= kHugePageHintBytes && huge_page_hints_enabled()) {
    hint_huge_pages(out.mutable_data_ptr(), nbytes);
  }
  return out;
}

int64_t mask_bytes(int64_t numel) {
  return ((numel + 63) / 64) * 8;
}

HostParams host_params(const char* op, const at::Tensor& scale, const at::Tensor& zero_point, int64_t quant_min,
                       int64_t quant_max, bool lsq_rounding, const char* param_name) {
  const at::Tensor s = scale.detach().to(at::kCPU, at::kFloat).contiguous().view(-1);
  const bool float_zp = at::isFloatingType(zero_point.scalar_type());
  const at::Tensor z =
      zero_point.detach().to(at::kCPU, float_zp ? at::kFloat : at::kLong).contiguous().view(-1);
  const int64_t n = s.numel();
  HostParams p;
  p.scale.resize(n);
  p.inv_scale.resize(n);
  p.zero_point.resize(n);
  const float* sp = s.data_ptr<float>();
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  const bool scale_is_step = std::strcmp(param_name, "alpha") != 0;
  for (int64_t c = 0; c < n; ++c) {
    const float sc = sp[c];
    TORCH_CHECK_VALUE(std::isfinite(sc) && sc > 0.0f, op, ": ", param_name,
                      " must be finite and > 0, got ", sc, n > 1 ? " at channel " : "",
                      n > 1 ? std::to_string(c) : std::string());
    // A subnormal scale passes the check above but its reciprocal is inf, and 0 * inf = NaN.
    TORCH_CHECK_VALUE(std::isfinite(1.0f / sc), op, ": ", param_name, " must have a finite reciprocal (scale > 1 / FLT_MAX ~ 2.94e-39), got ",
                      sc, n > 1 ? " at channel " : "", n > 1 ? std::to_string(c) : std::string());
    // (PACT passes alpha = scale * levels here: its levels are alpha at most.)
    TORCH_CHECK_VALUE(!scale_is_step || std::isfinite(sc * (qmax - qmin)), op, ": ", param_name, " * (quant_max - quant_min) must be "
                      "finite (the dequantized levels would overflow), got ", sc, n > 1 ? " at channel " : "",
                      n > 1 ? std::to_string(c) : std::string());
    p.scale[c] = sc;
    p.inv_scale[c] = 1.0f / sc;
    float zp;
    if (float_zp) {
      const float raw = z.data_ptr<float>()[c];
      TORCH_CHECK_VALUE(std::isfinite(raw), op, ": zero_point must be finite, got ", raw);
      zp = lsq_rounding ? round_zero_point(raw, qmin, qmax) : raw;
    } else {
      const int64_t raw = z.data_ptr<int64_t>()[c];
      TORCH_CHECK_VALUE(raw >= quant_min && raw <= quant_max, op, ": zero_point must lie in [quant_min, quant_max] = [",
                        quant_min, ", ", quant_max, "], got ", raw);
      zp = static_cast<float>(raw);
    }
    TORCH_CHECK_VALUE(zp >= qmin && zp <= qmax, op, ": zero_point must lie in [quant_min, quant_max] = [", quant_min,
                      ", ", quant_max, "], got ", zp);
    p.zero_point[c] = zp;
  }
  return p;
}

void check_out(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), "fake_quant: out must have the shape of x ", x.sizes(), ", got ",
                    out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == x.scalar_type(), "fake_quant: out must have dtype ", x.scalar_type(),
                   ", got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == x.device(), "fake_quant: out must be on ", x.device(), ", got ", out.device());
  TORCH_CHECK_VALUE(at::has_internal_overlap(out) != at::MemOverlap::Yes,
                    "fake_quant: out must not have internally overlapping memory");
}

int64_t check_pact_args(const char* op, const at::Tensor& x, const at::Tensor& alpha, int64_t bits,
                        std::optional<int64_t> axis) {
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 16, op, ": bits must be in [1, 16], got ", bits);
  const int64_t levels = (int64_t{1} << bits) - 1;
  const at::Tensor zero = at::zeros({alpha.numel()}, alpha.options().dtype(at::kInt));
  check_fake_quant_args(op, x, alpha, zero, 0, levels, axis, "alpha");
  return levels;
}

BackwardOperands backward_operands(const at::Tensor& grad, const at::Tensor& x, std::optional<int64_t> axis) {
  BackwardOperands o;
  o.x = dense_view(x);
  o.grad = same_layout_as(grad, o.x);
  o.dx = empty_output_like(o.x);
  o.layout = channel_layout(o.x, axis);
  return o;
}

QdropParams check_qdrop_args(const char* op, double drop_p, int64_t seed) {
  // Written so that NaN fails too.
  TORCH_CHECK_VALUE(drop_p >= 0.0 && drop_p <= 1.0, op, ": drop_p must be a probability in [0, 1], got ", drop_p);
  TORCH_CHECK_VALUE(seed >= 0, op, ": seed must be >= 0, got ", seed);
  return make_qdrop_params(drop_p, static_cast<uint64_t>(seed));
}

void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), op, ": grad must have the shape of x ", x.sizes(), ", got ",
                    grad.sizes());
  TORCH_CHECK_TYPE(grad.scalar_type() == x.scalar_type(), op, ": grad must have dtype ", x.scalar_type(), ", got ",
                   grad.scalar_type());
  TORCH_CHECK_VALUE(grad.device() == x.device(), op, ": grad must be on ", x.device(), ", got ", grad.device());
}

}  // namespace pyquant::ops
