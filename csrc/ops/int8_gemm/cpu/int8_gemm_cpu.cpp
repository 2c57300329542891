// CPU implementation of pack_int8_weight, int8_linear and int8_conv2d.
//
// GEMM driver: the output is cut into tasks of (group, block of kMBlockStrips strips of 6 rows, chunk
// of 64-column panels); at::parallel_for runs the tasks. Each task packs its activation rows once into
// a thread-local, cache-resident buffer ([K4][6][4] per strip; conv rows are gathered im2col-style
// straight into it, with the zero-point standing in for padding), then runs the micro-kernel over
// panels (outer) and strips (inner), so one weight panel stays hot in L1/L2 while it is reused. The
// micro-kernel keeps its int32 accumulators in registers for the whole K and applies the epilogue
// (zero-point term, scales, bias, ReLU, requantization) before anything is written.
// On CPUs with AMX-INT8 (and M >= 16) run_gemm_amx does the same with 32 x 32 tile blocks: activations
// are packed row-major, the weight panels are read as AMX B tiles in place.
// Depthwise conv (groups == C_in == C_out) runs directly on the NHWC input, one task per (image, output
// row): on VNNI CPUs the row-interleaved 3 x 3 kernel or the per-tap 5 x 5 kernel (weights and epilogue
// constants rearranged per call from the packed payload, see int8_gemm_kernels.h), otherwise (and with a
// fused residual) the older per-tap AVX-512 kernel or the scalar one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../int8_gemm.h"
#include "int8_gemm_kernels.h"
#include "ops/fake_quant/fake_quant.h"
#include "pyquant/requantize.h"

namespace pyquant::ops {
namespace {

using at::Tensor;
namespace k8 = cpu::int8;

constexpr int64_t kMBlockStrips = 16;  // 96 rows of activations per task

// ------------------------------------------------------------------------------------------- packing

std::tuple<Tensor, Tensor> pack_int8_weight_cpu(const Tensor& w_q, int64_t groups) {
  constexpr const char* op = "pack_int8_weight";
  TORCH_CHECK_TYPE(w_q.scalar_type() == at::kChar, op, ": w_q must be int8 (symmetric quantized weights), got ",
                   w_q.scalar_type());
  TORCH_CHECK_VALUE(w_q.dim() == 2 || w_q.dim() == 4, op,
                    ": w_q must be 2-d [out, in] (linear) or 4-d [out, in / groups, kh, kw] (conv), got shape ",
                    w_q.sizes());
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK_VALUE(w_q.numel() > 0, op, ": w_q is empty");
  const Tensor w = w_q.dim() == 2 ? w_q.contiguous() : w_q.permute({0, 2, 3, 1}).contiguous();  // [N][kh][kw][ci]
  PackedHeader h{};
  h.magic = kPackedMagic;
  h.n = static_cast<int32_t>(w_q.size(0));
  h.groups = static_cast<int32_t>(groups);
  h.kh = w_q.dim() == 4 ? static_cast<int32_t>(w_q.size(2)) : 1;
  h.kw = w_q.dim() == 4 ? static_cast<int32_t>(w_q.size(3)) : 1;
  h.cin_per_group = static_cast<int32_t>(w_q.size(1));
  TORCH_CHECK_VALUE(w_q.dim() == 4 || groups == 1, op, ": groups must be 1 for a linear (2-d) weight");
  TORCH_CHECK_VALUE(h.n % groups == 0, op, ": groups=", groups, " must divide the output channels ", h.n);
  const int64_t K = w.numel() / h.n;
  TORCH_CHECK_VALUE(K <= kInt8MaxReduction, op, ": the reduction length ", K, " exceeds ", kInt8MaxReduction,
                    " (int32 accumulation could overflow)");
  h.k = static_cast<int32_t>(K);
  const bool depthwise = w_q.dim() == 4 && groups > 1 && groups == h.n && h.cin_per_group == 1;
  h.kind = static_cast<int32_t>(depthwise ? PackedKind::kDepthwise : PackedKind::kGemm);

  Tensor packed = at::zeros({kPackedHeaderBytes + packed_payload_bytes(h)}, w_q.options().dtype(at::kChar));
  int8_t* base = packed.mutable_data_ptr<int8_t>();
  std::memcpy(base, &h, sizeof(h));
  int8_t* payload = base + kPackedHeaderBytes;
  const int8_t* src = w.const_data_ptr<int8_t>();
  Tensor col_sum = at::empty({h.n}, w_q.options().dtype(at::kInt));
  int32_t* cs = col_sum.mutable_data_ptr<int32_t>();
  for (int64_t n = 0; n < h.n; ++n) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += src[n * K + k];
    cs[n] = s;
  }
  if (depthwise) {
    const int64_t c_pad = (int64_t{h.n} + 63) / 64 * 64;
    for (int64_t c = 0; c < h.n; ++c)
      for (int64_t t = 0; t < K; ++t) payload[t * c_pad + c] = src[c * K + t];
  } else {
    const int64_t npg = h.n / groups;
    const int64_t panels = k8::num_panels(npg);
    const int64_t pbytes = k8::panel_bytes(K);
    at::parallel_for(0, groups * panels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t gp = begin; gp < end; ++gp) {
        const int64_t g = gp / panels, p = gp % panels;
        int8_t* dst = payload + gp * pbytes;
        const int64_t cols = std::min<int64_t>(k8::kNr, npg - p * k8::kNr);
        for (int64_t j = 0; j < cols; ++j) {
          const int8_t* row = src + (g * npg + p * k8::kNr + j) * K;
          for (int64_t k = 0; k < K; ++k) dst[((k / 4) * k8::kNr + j) * 4 + k % 4] = row[k];
        }
      }
    });
  }
  return {packed, col_sum};
}

// ----------------------------------------------------------------------------------------- dispatch

// The AMX path is taken for kernel="amx", and by "auto" when the CPU has AMX and M fills its tiles.
constexpr int64_t kAmxMinRows = 16;
bool use_amx(const char* op, Int8Kernel kernel, int64_t M) {
  if (kernel == Int8Kernel::kAmx) {
    TORCH_CHECK_VALUE(k8::cpu_has_amx(), op, ": kernel='amx' needs AMX-INT8 (and the OS permission), which this CPU lacks");
    return true;
  }
  return kernel == Int8Kernel::kAuto && M >= kAmxMinRows && k8::cpu_has_amx();
}

// The non-AMX GEMM paths (AMX is decided per call by use_amx).
enum class GemmPath { kScalar, kAvx2, kVnni };

GemmPath choose_gemm(const char* op, Int8Kernel kernel) {
  switch (kernel) {
    case Int8Kernel::kAmx:
    case Int8Kernel::kVnni:
      TORCH_CHECK_VALUE(k8::cpu_has_vnni(), op, ": kernel='vnni' needs AVX-512 VNNI, which this CPU lacks");
      return GemmPath::kVnni;
    case Int8Kernel::kAvx2:
      TORCH_CHECK_VALUE(k8::cpu_has_avx2(), op, ": kernel='avx2' needs AVX2, which this CPU lacks");
      return GemmPath::kAvx2;
    case Int8Kernel::kScalar:
      return GemmPath::kScalar;
    default:
      if (k8::cpu_has_vnni()) return GemmPath::kVnni;
      if (k8::cpu_has_avx2()) return GemmPath::kAvx2;
      return GemmPath::kScalar;
  }
}

// Per-column epilogue arrays for all N columns, padded by one panel so 64 columns can always be read.
struct EpilogueArrays {
  std::vector<int32_t> zero_point_term;
  std::vector<float> multiplier;
  std::vector<float> bias;
};

EpilogueArrays epilogue_arrays(const Int8Epilogue& ep, const Tensor& w_col_sum, const Tensor& w_scale,
                               const std::optional<Tensor>& bias, int64_t n, bool with_zero_point_term) {
  EpilogueArrays a;
  a.zero_point_term.assign(n + k8::kNr, 0);
  a.multiplier.assign(n + k8::kNr, 0.0f);
  a.bias.assign(n + k8::kNr, 0.0f);
  const Tensor cs = w_col_sum.contiguous();
  const Tensor ws = w_scale.contiguous();
  const int32_t* csp = cs.const_data_ptr<int32_t>();
  const float* wsp = ws.const_data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(wsp[i]) && wsp[i] > 0.0f, "w_scale must be finite and > 0, got ", wsp[i],
                      " at ", i);
    if (with_zero_point_term) a.zero_point_term[i] = int8_zero_point_term(ep.x_zero_point, csp[i]);
    a.multiplier[i] = int8_multiplier(ep.x_scale, wsp[i]);
  }
  if (bias.has_value()) {
    const Tensor b = bias->contiguous();
    std::copy_n(b.const_data_ptr<float>(), n, a.bias.begin());
  }
  return a;
}

k8::Epilogue make_epilogue(const Int8Epilogue& ep, const EpilogueArrays& arr, const Tensor& out) {
  k8::Epilogue e{};
  e.zero_point_term = arr.zero_point_term.data();
  e.multiplier = arr.multiplier.data();
  e.bias = arr.bias.data();
  e.relu = ep.relu;
  e.requantize = ep.requantize;
  e.inv_out_scale = ep.inv_out_scale;
  e.out_zero_point = ep.out_zero_point;
  if (ep.requantize) {
    e.out_u8 = out.mutable_data_ptr<uint8_t>();
  } else {
    e.out_f = out.mutable_data_ptr<float>();
  }
  return e;
}

k8::Epilogue offset_epilogue(const k8::Epilogue& e, int64_t row, int64_t col) {
  k8::Epilogue o = e;
  o.zero_point_term += col;
  o.multiplier += col;
  o.bias += col;
  if (e.requantize) {
    o.out_u8 += row * e.ld_out + col;
  } else {
    o.out_f += row * e.ld_out + col;
  }
  if (e.residual != nullptr) o.residual += row * e.ld_out + col;
  return o;
}

// How a GEMM is cut into parallel tasks: (group, block of `block` row units, chunk of weight panels).
// Row blocks shrink, and the panels split into chunks, until every thread has about two tasks.
struct TaskSplit {
  int64_t block, m_blocks, n_chunks, panels_per_chunk, tasks;
  int64_t group(int64_t t) const { return t / (m_blocks * n_chunks); }
  int64_t row_block(int64_t t) const { return (t / n_chunks) % m_blocks; }
  int64_t chunk(int64_t t) const { return t % n_chunks; }
};

TaskSplit split_tasks(int64_t row_units, int64_t groups, int64_t panels, int64_t max_block) {
  const int64_t threads = at::get_num_threads();
  TaskSplit s{};
  s.block = max_block;
  while (s.block > 1 && groups * ((row_units + s.block - 1) / s.block) * panels < 2 * threads) s.block /= 2;
  s.m_blocks = (row_units + s.block - 1) / s.block;
  s.n_chunks = 1;
  if (groups * s.m_blocks < 2 * threads) {
    s.n_chunks = std::min<int64_t>(panels, (2 * threads + groups * s.m_blocks - 1) / (groups * s.m_blocks));
  }
  s.panels_per_chunk = (panels + s.n_chunks - 1) / s.n_chunks;
  s.tasks = groups * s.m_blocks * s.n_chunks;
  return s;
}

// rows_into: see run_gemm_amx; direct (optional): row-major activations with row stride K (linear), read
// in place by the AVX2 path.
template <typename RowsIntoFn>
void run_gemm(int64_t M, int64_t npg, int64_t K, int64_t groups, const int8_t* payload, const k8::Epilogue& e,
              GemmPath path, const RowsIntoFn& rows_into, const uint8_t* direct) {
  const int64_t k4 = k8::k_groups(K);
  const int64_t strips = (M + k8::kMr - 1) / k8::kMr;
  const int64_t panels = k8::num_panels(npg);
  const int64_t pbytes = k8::panel_bytes(K);
  const int64_t sbytes = k8::strip_bytes(K);
  const TaskSplit split = split_tasks(strips, groups, panels, kMBlockStrips);
  const int64_t block = split.block, panels_per_chunk = split.panels_per_chunk, tasks = split.tasks;
  // The AVX2 kernel reads rows and panels widened to int16 (int8_gemm_kernels.h): rows are widened as they
  // are packed and each panel once per task, instead of in the kernel's loop for every row pair.
  const bool wide = path == GemmPath::kAvx2;
  const k8::StripPanelFn fn = path == GemmPath::kVnni ? k8::strip_panel_vnni : k8::strip_panel_scalar;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> a_buf(static_cast<size_t>(wide ? 0 : block * sbytes));
    std::vector<int16_t> a16(static_cast<size_t>(wide ? k8::wide_rows_elems(block * k8::kMr, k4) : 0), 0);
    std::vector<int16_t> b16(static_cast<size_t>(wide ? k8::wide_panel_elems(k4) : 0));
    // The AVX2 path gathers a block's rows at once (rows_into steps the conv geometry instead of dividing
    // per row); the other paths one row at a time.
    std::vector<uint8_t> scratch(static_cast<size_t>(wide && direct == nullptr ? block * k8::kMr * K : k4 * 4), 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g = split.group(t);
      const int64_t mb = split.row_block(t);
      const int64_t nc = split.chunk(t);
      const int64_t s0 = mb * block;
      const int64_t s1 = std::min(strips, s0 + block);
      if (wide) {
        // The block's rows back to back, widened to int16 (rows past M zero).
        const int64_t m0 = s0 * k8::kMr, valid = std::min(M, s1 * k8::kMr) - m0;
        const uint8_t* src = direct != nullptr ? direct + m0 * K : scratch.data();
        if (direct == nullptr) rows_into(g, m0, valid, scratch.data(), K);
        for (int64_t i = 0; i < valid; ++i) k8::widen_row_avx2(src + i * K, K, k4, a16.data() + i * k4 * 4);
        std::fill(a16.data() + valid * k4 * 4, a16.data() + (s1 - s0) * k8::kMr * k4 * 4, int16_t{0});
      }
      // Otherwise pack them as strips: [strip][K4][6][4], zero rows and zero K tail.
      for (int64_t s = s0; !wide && s < s1; ++s) {
        uint8_t* dst = a_buf.data() + (s - s0) * sbytes;
        for (int r = 0; r < k8::kMr; ++r) {
          const int64_t m = s * k8::kMr + r;
          if (m >= M) {
            for (int64_t q = 0; q < k4; ++q) std::memset(dst + (q * k8::kMr + r) * 4, 0, 4);
            continue;
          }
          rows_into(g, m, 1, scratch.data(), 0);
          const uint8_t* row = scratch.data();
          const int64_t full = K / 4;
          for (int64_t q = 0; q < full; ++q) std::memcpy(dst + (q * k8::kMr + r) * 4, row + q * 4, 4);
          if (full < k4) {
            uint8_t tail[4] = {0, 0, 0, 0};
            for (int64_t j = full * 4; j < K; ++j) tail[j - full * 4] = row[j];
            std::memcpy(dst + (full * k8::kMr + r) * 4, tail, 4);
          }
        }
      }
      const int64_t p0 = nc * panels_per_chunk;
      const int64_t p1 = std::min(panels, p0 + panels_per_chunk);
      for (int64_t p = p0; p < p1; ++p) {
        const int8_t* b = payload + (g * panels + p) * pbytes;
        const int cols = static_cast<int>(std::min<int64_t>(k8::kNr, npg - p * k8::kNr));
        if (wide) {
          // The block's rows are consecutive in a16 (rows past M are zero): one call covers them all.
          const int rows = static_cast<int>(std::min<int64_t>((s1 - s0) * k8::kMr, M - s0 * k8::kMr));
          k8::widen_panel_avx2(b, k4, cols, b16.data());
          k8::rows_panel_avx2(a16.data(), b16.data(), k4, rows, cols,
                              offset_epilogue(e, s0 * k8::kMr, g * npg + p * k8::kNr));
          continue;
        }
        if (fn == k8::strip_panel_vnni && cols <= k8::kNarrowCols) {
          const int rows = static_cast<int>(std::min<int64_t>((s1 - s0) * k8::kMr, M - s0 * k8::kMr));
          const k8::Epilogue es = offset_epilogue(e, s0 * k8::kMr, g * npg + p * k8::kNr);
          k8::strips_panel_vnni_narrow(a_buf.data(), sbytes, static_cast<int>(s1 - s0), b, k4, rows, cols, es);
          continue;
        }
        for (int64_t s = s0; s < s1; ++s) {
          const int rows = static_cast<int>(std::min<int64_t>(k8::kMr, M - s * k8::kMr));
          const k8::Epilogue es = offset_epilogue(e, s * k8::kMr, g * npg + p * k8::kNr);
          fn(a_buf.data() + (s - s0) * sbytes, b, k4, rows, cols, es);
        }
      }
    }
  });
}

// The AMX variant of run_gemm: activation rows are packed row-major ([rows][K rounded up to 64]) in
// blocks of kAmxBlocks x 32 rows; each 32-row x 64-column panel is computed as two 32 x 32 tile blocks.
constexpr int64_t kAmxBlocks = 4;
// rows_into(g, m, count, dst, ld) writes the K activation bytes of rows m .. m + count - 1 of group g
// to dst, dst + ld, ... (consecutive rows, so conv geometry is stepped instead of divided per row).
// direct (optional): row-major activations with row stride K, K % 64 == 0 (linear, 1x1 conv); full
// row blocks then load their A tiles straight from it, without packing.
template <typename RowsIntoFn>
void run_gemm_amx(int64_t M, int64_t npg, int64_t K, int64_t groups, const int8_t* payload, const k8::Epilogue& e,
                  const RowsIntoFn& rows_into, const uint8_t* direct) {
  const int64_t lda = k8::amx_lda(K);
  const int64_t ksteps = lda / 64;
  const int64_t row_blocks = (M + k8::kAmxRows - 1) / k8::kAmxRows;
  const int64_t panels = k8::num_panels(npg);
  const int64_t pbytes = k8::panel_bytes(K);
  const TaskSplit split = split_tasks(row_blocks, groups, panels, kAmxBlocks);
  const int64_t block = split.block, panels_per_chunk = split.panels_per_chunk, tasks = split.tasks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> a_buf(static_cast<size_t>(block * k8::kAmxRows * lda));
    alignas(64) int32_t c_buf[2][k8::kAmxRows * 32];
    // The block whose int32 results wait in c_buf[pending.slot] for their epilogue.
    struct Pending {
      int slot, rows, col0, cols;
      k8::Epilogue e;
    } pending{};
    int slot = 0;
    bool has_pending = false;
    auto flush = [&] {
      if (has_pending) k8::amx_epilogue(c_buf[pending.slot], pending.rows, pending.col0, pending.cols, pending.e);
      has_pending = false;
    };
    k8::amx_begin();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g = split.group(t);
      const int64_t mb = split.row_block(t);
      const int64_t nc = split.chunk(t);
      const int64_t m0 = mb * block * k8::kAmxRows;
      const int64_t m1 = std::min(M, m0 + block * k8::kAmxRows);
      const int64_t padded_rows = (m1 - m0 + k8::kAmxRows - 1) / k8::kAmxRows * k8::kAmxRows;
      const bool use_direct = direct != nullptr && m0 + padded_rows <= M;
      const uint8_t* a_base = use_direct ? direct + m0 * K : a_buf.data();
      if (!use_direct) rows_into(g, m0, m1 - m0, a_buf.data(), lda);
      for (int64_t i = 0; i < (use_direct ? 0 : padded_rows); ++i) {
        uint8_t* dst = a_buf.data() + i * lda;
        if (m0 + i < M) {
          if (lda > K) std::memset(dst + K, 0, lda - K);
        } else {
          std::memset(dst, 0, lda);
        }
      }
      const int64_t p0 = nc * panels_per_chunk;
      const int64_t p1 = std::min(panels, p0 + panels_per_chunk);
      for (int64_t p = p0; p < p1; ++p) {
        const int8_t* b = payload + (g * panels + p) * pbytes;
        const int cols = static_cast<int>(std::min<int64_t>(k8::kNr, npg - p * k8::kNr));
        for (int64_t r0 = m0; r0 < m1; r0 += k8::kAmxRows) {
          const int rows = static_cast<int>(std::min<int64_t>(k8::kAmxRows, M - r0));
          const k8::Epilogue es = offset_epilogue(e, r0, g * npg + p * k8::kNr);
          for (int half = 0; half < cols; half += 32) {
            k8::amx_compute(a_base + (r0 - m0) * lda, lda, b, ksteps, half, c_buf[slot]);
            flush();  // the previous block's epilogue runs while this block's tile work is in flight
            pending = Pending{slot, rows, half, std::min(32, cols - half), es};
            has_pending = true;
            slot ^= 1;
          }
        }
      }
    }
    flush();
    k8::amx_end();
  });
}

// Runs the GEMM on the chosen path.
// rows_into: see run_gemm_amx.
template <typename RowsIntoFn>
void dispatch_gemm(const char* op, Int8Kernel which, int64_t M, int64_t npg, int64_t K, int64_t groups,
                   const int8_t* payload, const k8::Epilogue& e, const RowsIntoFn& rows_into,
                   const uint8_t* direct = nullptr) {
  if (use_amx(op, which, M)) {
    run_gemm_amx(M, npg, K, groups, payload, e, rows_into, K % 64 == 0 ? direct : nullptr);
  } else {
    run_gemm(M, npg, K, groups, payload, e, choose_gemm(op, which), rows_into, direct);
  }
}

// Short copies of the im2col gather, inlined in 16-byte chunks (a libc memcpy call per tap costs as
// much as the copy for 64-channel rows).
inline void copy_bytes(uint8_t* dst, const uint8_t* src, int64_t n) {
  static const bool wide = k8::cpu_has_vnni();
  if (wide && n >= 32) return k8::copy_bytes_avx512(dst, src, n);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) std::memcpy(dst + i, src + i, 16);
  for (; i < n; ++i) dst[i] = src[i];
}

// ------------------------------------------------------------------------------------------- linear

Tensor int8_linear_cpu(const Tensor& x_q, double x_scale, int64_t x_zero_point, const Tensor& w_packed,
                       const Tensor& w_col_sum, const Tensor& w_scale, const std::optional<Tensor>& bias,
                       std::optional<double> out_scale, std::optional<int64_t> out_zero_point, bool relu,
                       c10::string_view kernel) {
  constexpr const char* op = "int8_linear";
  const PackedHeader h = read_packed_header(op, w_packed);
  TORCH_CHECK_VALUE(h.kind == static_cast<int32_t>(PackedKind::kGemm) && h.groups == 1 && h.kh == 1 && h.kw == 1,
                    op, ": w_packed was packed from a conv weight; pack a 2-d [out, in] weight for int8_linear");
  const Int8Epilogue ep =
      check_int8_epilogue(op, x_q, x_scale, x_zero_point, w_col_sum, w_scale, bias, out_scale, out_zero_point, relu, h.n);
  TORCH_CHECK_VALUE(x_q.dim() == 2, op, ": x_q must be 2-d [M, K], got shape ", x_q.sizes());
  TORCH_CHECK_VALUE(x_q.size(1) == h.k, op, ": x_q has K=", x_q.size(1), " features but the weight was packed for K=",
                    h.k);
  const Int8Kernel which = parse_int8_kernel(op, kernel);
  (void)choose_gemm(op, which);  // validates the requested path up front
  const Tensor x = x_q.contiguous();
  const int64_t M = x.size(0), K = h.k, N = h.n;
  Tensor out = empty_output_like(at::empty({M, N}, x.options().dtype(ep.requantize ? at::kByte : at::kFloat)));
  if (M == 0) return out;
  const EpilogueArrays arr = epilogue_arrays(ep, w_col_sum, w_scale, bias, N, true);
  k8::Epilogue e = make_epilogue(ep, arr, out);
  e.ld_out = N;
  const uint8_t* xp = x.const_data_ptr<uint8_t>();
  const int8_t* payload = w_packed.const_data_ptr<int8_t>() + kPackedHeaderBytes;
  dispatch_gemm(
      op, which, M, N, K, 1, payload, e,
      [&](int64_t, int64_t m, int64_t count, uint8_t* dst, int64_t ld) {
        for (int64_t i = 0; i < count; ++i) std::memcpy(dst + i * ld, xp + (m + i) * K, K);
      },
      xp);
  return out;
}

// --------------------------------------------------------------------------------------------- conv

Tensor int8_conv2d_cpu(const Tensor& x_q, double x_scale, int64_t x_zero_point, const Tensor& w_packed,
                       const Tensor& w_col_sum, const Tensor& w_scale, at::IntArrayRef kernel_size,
                       const std::optional<Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups, std::optional<double> out_scale,
                       std::optional<int64_t> out_zero_point, bool relu, c10::string_view kernel,
                       const std::optional<Tensor>& residual, double residual_scale, int64_t residual_zero_point) {
  constexpr const char* op = "int8_conv2d";
  const PackedHeader h = read_packed_header(op, w_packed);
  const Int8Epilogue ep =
      check_int8_epilogue(op, x_q, x_scale, x_zero_point, w_col_sum, w_scale, bias, out_scale, out_zero_point, relu, h.n);
  const ConvGeometry g = conv_geometry(op, x_q, kernel_size, stride, padding, dilation, groups, h.n);
  TORCH_CHECK_VALUE(h.groups == groups && h.kh == g.kh && h.kw == g.kw && h.cin_per_group * groups == g.c_in, op,
                    ": w_packed was packed for groups=", h.groups, ", kernel ", h.kh, "x", h.kw, ", ",
                    int64_t{h.cin_per_group} * h.groups, " input channels; the call has groups=", groups, ", kernel ",
                    g.kh, "x", g.kw, ", x_q with ", g.c_in, " channels");
  const Int8Kernel which = parse_int8_kernel(op, kernel);
  const GemmPath path = choose_gemm(op, which);
  // NHWC in memory; the output is NHWC too (channels_last strides, logical NCHW shape).
  const Tensor x = x_q.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = empty_output_like(at::empty({g.batch, g.c_out, g.oh, g.ow},
                                           x.options().dtype(ep.requantize ? at::kByte : at::kFloat),
                                           at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const bool depthwise = h.kind == static_cast<int32_t>(PackedKind::kDepthwise);
  // The direct VNNI depthwise kernel (no fused residual) subtracts zx * col_sum like the GEMM; the other
  // depthwise kernels subtract the zero-point from every tap instead.
  const bool depthwise_vnni = depthwise && path == GemmPath::kVnni && !residual.has_value() &&
                              k8::depthwise_vnni_supports(g.kh, g.kw);
  const EpilogueArrays arr =
      epilogue_arrays(ep, w_col_sum, w_scale, bias, g.c_out, !depthwise || depthwise_vnni);
  k8::Epilogue e = make_epilogue(ep, arr, out);
  e.ld_out = g.c_out;
  const Tensor res = check_residual(op, residual, out, residual_scale, residual_zero_point);
  if (res.defined()) {
    e.residual = res.const_data_ptr<uint8_t>();
    e.residual_scale = static_cast<float>(residual_scale);
    e.residual_zero_point = static_cast<float>(residual_zero_point);
  }
  const uint8_t* xp = x.const_data_ptr<uint8_t>();
  const int8_t* payload = w_packed.const_data_ptr<int8_t>() + kPackedHeaderBytes;

  if (depthwise) {
    const k8::DepthwiseRowFn dw = path == GemmPath::kVnni   ? k8::depthwise_row_avx512
                                  : path == GemmPath::kAvx2 ? k8::depthwise_row_avx2
                                                            : k8::depthwise_row_scalar;
    k8::DepthwiseArgs a{};
    a.w = payload;
    a.H = g.h, a.W = g.w, a.C = g.c_in, a.C_pad = (g.c_in + 63) / 64 * 64, a.KH = g.kh, a.KW = g.kw, a.OW = g.ow;
    a.stride_h = g.stride[0], a.stride_w = g.stride[1], a.pad_h = g.padding[0], a.pad_w = g.padding[1];
    a.dil_h = g.dilation[0], a.dil_w = g.dilation[1];
    a.x_zero_point = ep.x_zero_point;
    // C_pad + 32 bytes: the vector kernel reads up to 32 channels past a block start (masked).
    const std::vector<uint8_t> zero_row(static_cast<size_t>(a.C_pad + 32), static_cast<uint8_t>(ep.x_zero_point));
    a.zero_row = zero_row.data();
    if (depthwise_vnni && k8::depthwise_vnni_rows_supports(g.kh, g.kw)) {
      const int64_t pixels = k8::depthwise_vnni_rows_pixels(a.C, g.stride[1]);
      const int64_t blocks = pixels > 1 ? 1 : k8::depthwise_vnni_blocks(a.C);
      std::vector<int8_t> w3(static_cast<size_t>(blocks * 3 * 256));
      std::vector<int32_t> init(static_cast<size_t>(blocks * 64));
      std::vector<float> mult(static_cast<size_t>(blocks * 64)), bias4(static_cast<size_t>(blocks * 64));
      if (pixels > 1) {
        // `pixels` adjacent pixels per vector: 64 virtual channels, channel i % C at byte i.
        std::vector<int8_t> vw(9 * 64);
        std::vector<int32_t> vz(64);
        std::vector<float> vm(64), vb(64);
        for (int64_t i = 0; i < 64; ++i) {
          for (int64_t t = 0; t < 9; ++t) vw[t * 64 + i] = payload[t * a.C_pad + i % a.C];
          vz[i] = arr.zero_point_term[i % a.C];
          vm[i] = arr.multiplier[i % a.C];
          vb[i] = arr.bias[i % a.C];
        }
        k8::depthwise_vnni_rows_prepare(vw.data(), 64, 64, vz.data(), vm.data(), vb.data(), w3.data(), init.data(),
                                        mult.data(), bias4.data());
      } else {
        k8::depthwise_vnni_rows_prepare(payload, a.C, a.C_pad, arr.zero_point_term.data(), arr.multiplier.data(),
                                        arr.bias.data(), w3.data(), init.data(), mult.data(), bias4.data());
      }
      const std::vector<uint8_t> zero_rows(static_cast<size_t>(g.w * g.c_in + 64),
                                           static_cast<uint8_t>(ep.x_zero_point));
      const bool clamp = !(ep.requantize && k8::depthwise_vnni_rows_no_clamp(a.C, arr.multiplier.data(),
                                                                              arr.bias.data(), ep.inv_out_scale));
      const k8::DepthwiseVnniRowsPlan plan{w3.data(), init.data(), mult.data(), bias4.data(), zero_rows.data(), pixels,
                                           clamp};
      const int64_t scratch_bytes = k8::depthwise_vnni_rows_scratch_bytes(g.stride[1], g.dilation[1]);
      at::parallel_for(0, g.batch * g.oh, 1, [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> scratch(static_cast<size_t>(scratch_bytes));
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / g.oh, oh = r % g.oh;
          k8::DepthwiseArgs an = a;
          an.x = xp + n * g.h * g.w * g.c_in;
          k8::depthwise_row_vnni_rows(an, plan, oh, offset_epilogue(e, r * g.ow, 0), scratch.data());
        }
      });
      return out;
    }
    if (depthwise_vnni) {
      // Per call: the weights and epilogue constants in the kernel's per-block order (taps * C_pad * 4
      // bytes), and a row of zero-point bytes standing in for input rows outside the image.
      const int64_t blocks = k8::depthwise_vnni_blocks(a.C), taps = g.kh * g.kw;
      std::vector<int8_t> w4(static_cast<size_t>(blocks * taps * 256));
      std::vector<int32_t> init(static_cast<size_t>(blocks * 64));
      std::vector<float> mult(static_cast<size_t>(blocks * 64)), bias4(static_cast<size_t>(blocks * 64));
      k8::depthwise_vnni_prepare(payload, a.C, a.C_pad, taps, arr.zero_point_term.data(), arr.multiplier.data(),
                                 arr.bias.data(), w4.data(), init.data(), mult.data(), bias4.data());
      const std::vector<uint8_t> zero_rows(static_cast<size_t>(g.w * g.c_in + 64),
                                           static_cast<uint8_t>(ep.x_zero_point));
      const k8::DepthwiseVnniPlan plan{w4.data(), init.data(), mult.data(), bias4.data(), zero_rows.data()};
      at::parallel_for(0, g.batch * g.oh, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / g.oh, oh = r % g.oh;
          k8::DepthwiseArgs an = a;
          an.x = xp + n * g.h * g.w * g.c_in;
          k8::depthwise_row_vnni(an, plan, oh, offset_epilogue(e, r * g.ow, 0));
        }
      });
      return out;
    }
    at::parallel_for(0, g.batch * g.oh, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.oh, oh = r % g.oh;
        k8::DepthwiseArgs an = a;
        an.x = xp + n * g.h * g.w * g.c_in;
        dw(an, oh, offset_epilogue(e, r * g.ow, 0));
      }
    });
    return out;
  }

  const int64_t M = g.batch * g.oh * g.ow;
  const int64_t cin_g = g.c_in / groups;
  const int64_t npg = g.c_out / groups;
  const int64_t K = h.k;
  const bool pointwise = g.kh == 1 && g.kw == 1 && g.stride[0] == 1 && g.stride[1] == 1 && g.padding[0] == 0 &&
                         g.padding[1] == 0 && groups == 1;
  if (pointwise) {
    dispatch_gemm(
        op, which, M, npg, K, 1, payload, e,
        [&](int64_t, int64_t m, int64_t count, uint8_t* dst, int64_t ld) {
          for (int64_t i = 0; i < count; ++i) std::memcpy(dst + i * ld, xp + (m + i) * g.c_in, K);
        },
        xp);
    return out;
  }
  const uint8_t zx = static_cast<uint8_t>(ep.x_zero_point);
  const bool contiguous_taps = groups == 1 && g.dilation[1] == 1;
  auto gather_row = [&](int64_t grp, int64_t n, int64_t oh, int64_t ow, uint8_t* dst) {
    for (int64_t kh = 0; kh < g.kh; ++kh) {
      const int64_t ih = oh * g.stride[0] - g.padding[0] + kh * g.dilation[0];
      const int64_t iw0 = ow * g.stride[1] - g.padding[1];
      if (contiguous_taps && ih >= 0 && ih < g.h && iw0 >= 0 && iw0 + g.kw <= g.w) {
        // The kw taps of this kernel row are adjacent NHWC pixels: one run of kw * C bytes.
        copy_bytes(dst, xp + ((n * g.h + ih) * g.w + iw0) * g.c_in, g.kw * cin_g);
        dst += g.kw * cin_g;
        continue;
      }
      for (int64_t kw = 0; kw < g.kw; ++kw, dst += cin_g) {
        const int64_t iw = ow * g.stride[1] - g.padding[1] + kw * g.dilation[1];
        if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) {
          std::memset(dst, zx, cin_g);
        } else {
          copy_bytes(dst, xp + ((n * g.h + ih) * g.w + iw) * g.c_in + grp * cin_g, cin_g);
        }
      }
    }
  };
  dispatch_gemm(op, which, M, npg, K, groups, payload, e,
                [&](int64_t grp, int64_t m, int64_t count, uint8_t* dst, int64_t ld) {
                  int64_t ow = m % g.ow;
                  int64_t oh = (m / g.ow) % g.oh;
                  int64_t n = m / (g.ow * g.oh);
                  for (int64_t i = 0; i < count; ++i) {
                    gather_row(grp, n, oh, ow, dst + i * ld);
                    if (++ow == g.ow) {
                      ow = 0;
                      if (++oh == g.oh) {
                        oh = 0;
                        ++n;
                      }
                    }
                  }
                });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyquant, CPU, m) {
  m.impl("pack_int8_weight", &pack_int8_weight_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
  m.impl("int8_conv2d", &int8_conv2d_cpu);
}

}  // namespace pyquant::ops
