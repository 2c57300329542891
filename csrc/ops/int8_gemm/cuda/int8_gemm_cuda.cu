// CUDA kernels of int8_linear / int8_conv2d (sm_80+): u8 x s8 tensor-core GEMM with
// mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32, int32 accumulation in registers, and the epilogue of
// pyquant/requantize.h applied straight from the accumulator fragments (int32 never reaches memory).
// Conv runs as an implicit GEMM on the same kernel: the A tile gathers NHWC activations (k ordered
// (kh, kw, c_in) like the packed weights), with the zero-point standing in for padding. Depthwise conv
// has a direct kernel. pack_int8_weight packs on the host (a one-time step) and copies to the device, so
// the packed layout is byte-identical to the CPU one (see cpu/int8_gemm_kernels.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "../int8_gemm.h"
#include "pyquant/requantize.h"

namespace pyquant::ops {
namespace {

using at::Tensor;

constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kBlockK = 32;
constexpr int kThreads = 128;  // 4 warps, 2 x 2, each 32 x 32
constexpr int kSmemStride = 48;  // bytes per shared row: 32 data + 16 pad (conflict-free fragment reads)
constexpr int kNr = 64;          // packed panel width (cpu::int8::kNr)

struct GemmParams {
  // A source: linear (x row-major [M, K]) or conv (NHWC image gather).
  const uint8_t* x;
  int64_t M, K, npg;  // rows, reduction length, output columns per group
  int64_t ld_x;       // linear: row stride of x
  bool conv;
  int64_t H, W, C, OH, OW, KW, cin_g, sh, sw, ph, pw, dh, dw;
  // B: packed panels of the group (header skipped), panel stride in bytes.
  const int8_t* b;
  int64_t panel_bytes, panels;
  // Epilogue.
  const int32_t* col_sum;
  const float* w_scale;
  const float* bias;
  float x_scale;
  int32_t x_zero_point;
  bool relu, requantize;
  float inv_out_scale, out_zero_point;
  float* out_f;
  uint8_t* out_u8;
  int64_t ld_out;
  const uint8_t* residual;  // fused residual codes laid out as the output, or nullptr
  float residual_scale, residual_zero_point;
};

__device__ __forceinline__ uint8_t load_a(const GemmParams& p, int64_t m, int64_t k, int64_t group) {
  if (m >= p.M || k >= p.K) return 0;  // zero rows / K tail: multiplied by zero weights or discarded
  if (!p.conv) return p.x[m * p.ld_x + k];
  const int64_t ci = k % p.cin_g;
  const int64_t tap = k / p.cin_g;
  const int64_t kw = tap % p.KW, kh = tap / p.KW;
  const int64_t ow = m % p.OW, oh = (m / p.OW) % p.OH, n = m / (p.OW * p.OH);
  const int64_t ih = oh * p.sh - p.ph + kh * p.dh;
  const int64_t iw = ow * p.sw - p.pw + kw * p.dw;
  if (ih < 0 || ih >= p.H || iw < 0 || iw >= p.W) return static_cast<uint8_t>(p.x_zero_point);
  return p.x[((n * p.H + ih) * p.W + iw) * p.C + group * p.cin_g + ci];
}

__device__ __forceinline__ void mma_u8s8(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void store_out(const GemmParams& p, int64_t m, int64_t n_local, int64_t group,
                                          int32_t raw) {
  if (m >= p.M || n_local >= p.npg) return;
  const int64_t n = group * p.npg + n_local;
  const int32_t acc = raw - int8_zero_point_term(p.x_zero_point, p.col_sum[n]);
  const bool res = p.residual != nullptr;
  const float y = int8_dequant_acc_residual(acc, int8_multiplier(p.x_scale, p.w_scale[n]), p.bias ? p.bias[n] : 0.0f,
                                            res, res ? p.residual[m * p.ld_out + n] : 0, p.residual_scale,
                                            p.residual_zero_point, p.relu);
  if (p.requantize) {
    p.out_u8[m * p.ld_out + n] = int8_requantize(y, p.inv_out_scale, p.out_zero_point);
  } else {
    p.out_f[m * p.ld_out + n] = y;
  }
}

// Grid: (column tiles, row tiles, groups). Each warp owns a 32 x 32 sub-tile: 2 (m16) x 4 (n8) mma tiles.
__global__ void __launch_bounds__(kThreads) int8_gemm_kernel(GemmParams p) {
  __shared__ __align__(16) uint8_t a_s[kBlockM * kSmemStride];
  __shared__ __align__(16) int8_t b_s[kBlockN * kSmemStride];
  const int64_t group = blockIdx.z;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBlockM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBlockN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int g = lane / 4, t = lane % 4;
  const int8_t* b_group = p.b + group * p.panels * p.panel_bytes;
  // n0 is a multiple of 64: the block's columns are exactly one packed panel.
  const int8_t* b_panel = b_group + (n0 / kNr) * p.panel_bytes;

  int32_t acc[2][4][4] = {};
  for (int64_t k0 = 0; k0 < p.K; k0 += kBlockK) {
    // A: 64 rows x 32 bytes, 16 bytes per thread.
    {
      const int row = threadIdx.x / 2, half = (threadIdx.x % 2) * 16;
      uint8_t* dst = a_s + row * kSmemStride + half;
      const int64_t m = m0 + row;
      if (!p.conv && m < p.M && k0 + half + 16 <= p.K && (p.ld_x % 16) == 0) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(p.x + m * p.ld_x + k0 + half);
      } else {
#pragma unroll
        for (int j = 0; j < 16; ++j) dst[j] = load_a(p, m, k0 + half + j, group);
      }
    }
    // B: 64 columns x 32 k; (n, k..k+3) is one aligned 32-bit word of the panel; zero K tail in the panel.
    {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int idx = threadIdx.x + i * kThreads;  // 0..511 words
        const int col = idx % kBlockN, kw4 = idx / kBlockN;  // 8 words per column
        const int64_t kg = k0 / 4 + kw4;
        const bool in_range = n0 + col < p.npg && kg * 4 < p.K;
        const uint32_t word = in_range ? *reinterpret_cast<const uint32_t*>(b_panel + (kg * kNr + col) * 4) : 0u;
        *reinterpret_cast<uint32_t*>(b_s + col * kSmemStride + kw4 * 4) = word;
      }
    }
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const uint8_t* ar = a_s + (wm + mi * 16 + g) * kSmemStride;
      const uint32_t a[4] = {
          *reinterpret_cast<const uint32_t*>(ar + 4 * t),
          *reinterpret_cast<const uint32_t*>(ar + 8 * kSmemStride + 4 * t),
          *reinterpret_cast<const uint32_t*>(ar + 16 + 4 * t),
          *reinterpret_cast<const uint32_t*>(ar + 8 * kSmemStride + 16 + 4 * t),
      };
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int8_t* bc = b_s + (wn + ni * 8 + g) * kSmemStride;
        const uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(bc + 4 * t),
                               *reinterpret_cast<const uint32_t*>(bc + 16 + 4 * t)};
        mma_u8s8(acc[mi][ni], a, b);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
      const int64_t r = m0 + wm + mi * 16 + g;
      const int64_t c = n0 + wn + ni * 8 + 2 * t;
      store_out(p, r, c, group, acc[mi][ni][0]);
      store_out(p, r, c + 1, group, acc[mi][ni][1]);
      store_out(p, r + 8, c, group, acc[mi][ni][2]);
      store_out(p, r + 8, c + 1, group, acc[mi][ni][3]);
    }
  }
}

struct DepthwiseParams {
  const uint8_t* x;
  const int8_t* w;  // [taps][C_pad]
  int64_t N, H, W, C, C_pad, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw;
  GemmParams e;  // epilogue fields only
};

// One thread per output element (NHWC order: consecutive threads take consecutive channels).
__global__ void int8_depthwise_kernel(DepthwiseParams d) {
  const int64_t total = d.N * d.OH * d.OW * d.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % d.C;
    const int64_t pix = i / d.C;
    const int64_t ow = pix % d.OW, oh = (pix / d.OW) % d.OH, n = pix / (d.OW * d.OH);
    int32_t acc = 0;
    for (int64_t kh = 0; kh < d.KH; ++kh) {
      const int64_t ih = oh * d.sh - d.ph + kh * d.dh;
      if (ih < 0 || ih >= d.H) continue;
      for (int64_t kw = 0; kw < d.KW; ++kw) {
        const int64_t iw = ow * d.sw - d.pw + kw * d.dw;
        if (iw < 0 || iw >= d.W) continue;
        const int32_t xv = static_cast<int32_t>(d.x[((n * d.H + ih) * d.W + iw) * d.C + c]) - d.e.x_zero_point;
        acc += xv * static_cast<int32_t>(d.w[(kh * d.KW + kw) * d.C_pad + c]);
      }
    }
    // acc already has the zero-point applied: pass it through store_out with a zero col_sum term.
    const bool res = d.e.residual != nullptr;
    const float y = int8_dequant_acc_residual(acc, int8_multiplier(d.e.x_scale, d.e.w_scale[c]),
                                              d.e.bias ? d.e.bias[c] : 0.0f, res, res ? d.e.residual[pix * d.C + c] : 0,
                                              d.e.residual_scale, d.e.residual_zero_point, d.e.relu);
    if (d.e.requantize) {
      d.e.out_u8[pix * d.C + c] = int8_requantize(y, d.e.inv_out_scale, d.e.out_zero_point);
    } else {
      d.e.out_f[pix * d.C + c] = y;
    }
  }
}

void fill_epilogue(GemmParams& p, const Int8Epilogue& ep, const Tensor& w_col_sum, const Tensor& w_scale,
                   const std::optional<Tensor>& bias, Tensor& out) {
  p.col_sum = w_col_sum.const_data_ptr<int32_t>();
  p.w_scale = w_scale.const_data_ptr<float>();
  p.bias = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
  p.x_scale = ep.x_scale;
  p.x_zero_point = ep.x_zero_point;
  p.relu = ep.relu;
  p.requantize = ep.requantize;
  p.inv_out_scale = ep.inv_out_scale;
  p.out_zero_point = ep.out_zero_point;
  if (ep.requantize) {
    p.out_u8 = out.mutable_data_ptr<uint8_t>();
  } else {
    p.out_f = out.mutable_data_ptr<float>();
  }
}

int64_t panel_bytes_of(int64_t K) { return ((K + 3) / 4 + 15) / 16 * 16 * kNr * 4; }

void launch_gemm(const GemmParams& p, int64_t groups) {
  const int64_t col_tiles = (p.npg + kBlockN - 1) / kBlockN;
  const int64_t row_tiles = (p.M + kBlockM - 1) / kBlockM;
  TORCH_CHECK_VALUE(row_tiles <= 65535 && groups <= 65535, "int8 GEMM on CUDA: too many rows or groups");
  const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(row_tiles), static_cast<unsigned>(groups));
  int8_gemm_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor> pack_int8_weight_cuda(const Tensor& w_q, int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pyquant::pack_int8_weight", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, int64_t)>();
  auto [packed, col_sum] = op.call(w_q.cpu(), groups);
  return {packed.to(w_q.device()), col_sum.to(w_q.device())};
}

Tensor int8_linear_cuda(const Tensor& x_q, double x_scale, int64_t x_zero_point, const Tensor& w_packed,
                        const Tensor& w_col_sum, const Tensor& w_scale, const std::optional<Tensor>& bias,
                        std::optional<double> out_scale, std::optional<int64_t> out_zero_point, bool relu,
                        c10::string_view kernel) {
  constexpr const char* op = "int8_linear";
  const c10::cuda::CUDAGuard guard(x_q.device());
  const PackedHeader h = read_packed_header(op, w_packed);
  TORCH_CHECK_VALUE(h.kind == static_cast<int32_t>(PackedKind::kGemm) && h.groups == 1 && h.kh == 1 && h.kw == 1,
                    op, ": w_packed was packed from a conv weight; pack a 2-d [out, in] weight for int8_linear");
  const Int8Epilogue ep =
      check_int8_epilogue(op, x_q, x_scale, x_zero_point, w_col_sum, w_scale, bias, out_scale, out_zero_point, relu, h.n);
  (void)parse_int8_kernel(op, kernel);
  TORCH_CHECK_VALUE(x_q.dim() == 2, op, ": x_q must be 2-d [M, K], got shape ", x_q.sizes());
  TORCH_CHECK_VALUE(x_q.size(1) == h.k, op, ": x_q has K=", x_q.size(1), " features but the weight was packed for K=",
                    h.k);
  const Tensor x = x_q.contiguous();
  Tensor out = at::empty({x.size(0), int64_t{h.n}}, x.options().dtype(ep.requantize ? at::kByte : at::kFloat));
  if (out.numel() == 0) return out;
  GemmParams p{};
  p.x = x.const_data_ptr<uint8_t>();
  p.M = x.size(0);
  p.K = h.k;
  p.npg = h.n;
  p.ld_x = h.k;
  p.conv = false;
  p.b = w_packed.const_data_ptr<int8_t>() + kPackedHeaderBytes;
  p.panel_bytes = panel_bytes_of(h.k);
  p.panels = (h.n + kNr - 1) / kNr;
  p.ld_out = h.n;
  fill_epilogue(p, ep, w_col_sum, w_scale, bias, out);
  launch_gemm(p, 1);
  return out;
}

Tensor int8_conv2d_cuda(const Tensor& x_q, double x_scale, int64_t x_zero_point, const Tensor& w_packed,
                        const Tensor& w_col_sum, const Tensor& w_scale, at::IntArrayRef kernel_size,
                        const std::optional<Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, std::optional<double> out_scale,
                        std::optional<int64_t> out_zero_point, bool relu, c10::string_view kernel,
                        const std::optional<Tensor>& residual, double residual_scale, int64_t residual_zero_point) {
  constexpr const char* op = "int8_conv2d";
  const c10::cuda::CUDAGuard guard(x_q.device());
  const PackedHeader h = read_packed_header(op, w_packed);
  const Int8Epilogue ep =
      check_int8_epilogue(op, x_q, x_scale, x_zero_point, w_col_sum, w_scale, bias, out_scale, out_zero_point, relu, h.n);
  const ConvGeometry g = conv_geometry(op, x_q, kernel_size, stride, padding, dilation, groups, h.n);
  TORCH_CHECK_VALUE(h.groups == groups && h.kh == g.kh && h.kw == g.kw && h.cin_per_group * groups == g.c_in, op,
                    ": w_packed was packed for groups=", h.groups, ", kernel ", h.kh, "x", h.kw,
                    "; the call does not match");
  (void)parse_int8_kernel(op, kernel);
  const Tensor x = x_q.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = at::empty({g.batch, g.c_out, g.oh, g.ow}, x.options().dtype(ep.requantize ? at::kByte : at::kFloat),
                         at::MemoryFormat::ChannelsLast);
  if (out.numel() == 0) return out;
  GemmParams p{};
  fill_epilogue(p, ep, w_col_sum, w_scale, bias, out);
  p.ld_out = g.c_out;
  const Tensor res = check_residual(op, residual, out, residual_scale, residual_zero_point);
  if (res.defined()) {
    p.residual = res.const_data_ptr<uint8_t>();
    p.residual_scale = static_cast<float>(residual_scale);
    p.residual_zero_point = static_cast<float>(residual_zero_point);
  }
  const int8_t* payload = w_packed.const_data_ptr<int8_t>() + kPackedHeaderBytes;
  if (h.kind == static_cast<int32_t>(PackedKind::kDepthwise)) {
    DepthwiseParams d{};
    d.x = x.const_data_ptr<uint8_t>();
    d.w = payload;
    d.N = g.batch, d.H = g.h, d.W = g.w, d.C = g.c_in, d.C_pad = (g.c_in + 63) / 64 * 64, d.KH = g.kh, d.KW = g.kw;
    d.OH = g.oh, d.OW = g.ow, d.sh = g.stride[0], d.sw = g.stride[1], d.ph = g.padding[0], d.pw = g.padding[1];
    d.dh = g.dilation[0], d.dw = g.dilation[1];
    d.e = p;
    const int64_t total = out.numel();
    const int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535 * 8));
    int8_depthwise_kernel<<<blocks, 256, 0, at::cuda::getCurrentCUDAStream()>>>(d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
  }
  p.x = x.const_data_ptr<uint8_t>();
  p.M = g.batch * g.oh * g.ow;
  p.K = h.k;
  p.npg = g.c_out / groups;
  p.conv = true;
  p.H = g.h, p.W = g.w, p.C = g.c_in, p.OH = g.oh, p.OW = g.ow, p.KW = g.kw, p.cin_g = g.c_in / groups;
  p.sh = g.stride[0], p.sw = g.stride[1], p.ph = g.padding[0], p.pw = g.padding[1];
  p.dh = g.dilation[0], p.dw = g.dilation[1];
  p.b = payload;
  p.panel_bytes = panel_bytes_of(h.k);
  p.panels = (p.npg + kNr - 1) / kNr;
  launch_gemm(p, groups);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CUDA, m) {
  m.impl("pack_int8_weight", &pack_int8_weight_cuda);
  m.impl("int8_linear", &int8_linear_cuda);
  m.impl("int8_conv2d", &int8_conv2d_cuda);
}

}  // namespace pyquant::ops
