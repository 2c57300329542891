#pragma once
// Micro-kernels of the int8 GEMM (int8_linear, int8_conv2d) and the depthwise conv. Plain C++ with
// no torch headers: int8_gemm_x86.cpp compiles its functions with per-function target attributes
// (AVX-512 VNNI, AVX2), chosen at run time, so the same binary runs on any x86-64.
//
// Packed layouts (all zero-padded):
//   B (weights, per group): panels of kNr = 64 output columns; panel p holds [K4][64][4] int8, where
//     K4 = ceil(K / 4) and element (n, k) sits at p = n / 64, ((k / 4) * 64 + n % 64) * 4 + k % 4.
//     vpdpbusd multiplies 4 consecutive k of one column with 4 broadcast activation bytes.
//     K4 is padded to a multiple of 16 with zeros (AMX tiles read 16 groups at a time).
//   A (activations, per tile): strips of kMr = 6 rows; strip s holds [K4][6][4] uint8, element (m, k)
//     at ((k / 4) * 6 + m % 6) * 4 + k % 4.
//   Depthwise weights: [taps][C_pad] int8 with C_pad = round_up(C, 64) (zero padded).
#include <cstdint>

namespace pyquant::cpu::int8 {

constexpr int kNr = 64;
constexpr int kMr = 6;

inline int64_t k_groups(int64_t K) { return (K + 3) / 4; }
// K4 is padded to a multiple of 16 (64 values of K): an AMX B tile covers 16 groups of 4.
inline int64_t panel_bytes(int64_t K) { return (k_groups(K) + 15) / 16 * 16 * kNr * 4; }
inline int64_t num_panels(int64_t N) { return (N + kNr - 1) / kNr; }
inline int64_t strip_bytes(int64_t K) { return k_groups(K) * kMr * 4; }

// Per-column epilogue constants of one output tile (pointers already offset to the tile's first
// column; arrays padded so that 64 columns can always be read) and the output.
struct Epilogue {
  const int32_t* zero_point_term;  // zx * col_sum[n]
  const float* multiplier;         // sx * sw[n]
  const float* bias;               // bias[n] (zeros when absent)
  bool relu;
  bool requantize;  // uint8 output
  float inv_out_scale;
  float out_zero_point;
  float* out_f;      // float output at (row 0, column 0) of the tile
  uint8_t* out_u8;   // uint8 output at (row 0, column 0) of the tile
  int64_t ld_out;    // row stride of the output in elements
  // Fused residual add: uint8 codes laid out as the output (same ld_out), added before the ReLU.
  const uint8_t* residual;  // nullptr: none
  float residual_scale;
  float residual_zero_point;
};

// One strip (up to kMr valid rows) times one panel (up to kNr valid columns), full K, with the epilogue.
using StripPanelFn = void (*)(const uint8_t* a_strip, const int8_t* b_panel, int64_t k4, int rows, int cols,
                              const Epilogue& e);

void strip_panel_scalar(const uint8_t* a_strip, const int8_t* b_panel, int64_t k4, int rows, int cols,
                        const Epilogue& e);
void strip_panel_vnni(const uint8_t* a_strip, const int8_t* b_panel, int64_t k4, int rows, int cols,
                      const Epilogue& e);
// The AVX2 path works on operands widened to int16 once per row and per panel (vpmaddwd on them is exact;
// vpmaddubsw on the bytes would saturate its int16 pair sums), so its inner loop is one broadcast load per
// row and two vpmaddwd per row and 8 columns. The GEMM driver widens a block's rows as it gathers them, and
// each panel once per block, then calls rows_panel_avx2 on the whole block:
//   A16: `rows` consecutive rows of K4 * 4 int16 (zero padded), each written by widen_row_avx2, followed by
//     zero rows up to a multiple of kWideTileRows (wide_rows_elems);
//   B16: a panel as [cols / 8][K4][8][4] int16 (the 8-column blocks holding valid columns), by widen_panel_avx2.
constexpr int kWideTileRows = 4;
inline int64_t wide_rows_elems(int64_t rows, int64_t k4) {
  return (rows + kWideTileRows - 1) / kWideTileRows * kWideTileRows * k4 * 4;
}
inline int64_t wide_panel_elems(int64_t k4) { return kNr * k4 * 4; }
void widen_row_avx2(const uint8_t* row, int64_t K, int64_t k4, int16_t* dst);
void widen_panel_avx2(const int8_t* b_panel, int64_t k4, int cols, int16_t* dst);
void rows_panel_avx2(const int16_t* a16, const int16_t* b16, int64_t k4, int rows, int cols,
                     const Epilogue& e);
// `strips` consecutive strips (strip_stride bytes apart; `rows` valid rows in all) times a panel with
// cols <= 32 valid columns: the narrow-layer VNNI path (only the valid 16-column vectors are computed).
constexpr int kNarrowCols = 32;
void strips_panel_vnni_narrow(const uint8_t* a_strips, int64_t strip_stride, int strips, const int8_t* b_panel,
                              int64_t k4, int rows, int cols, const Epilogue& e);

// AMX (Sapphire Rapids+): A is row-major [rows][lda] with lda = K rounded up to 64 (zero padded);
// amx_compute: the raw 32 x 32 int32 block at column col0 (0 or 32) of the panel with 2x2 tiles, into
// a [32][32] scratch; amx_epilogue: rows x cols of it through the epilogue.
constexpr int kAmxRows = 32;
inline int64_t amx_lda(int64_t K) { return (K + 63) / 64 * 64; }
void amx_compute(const uint8_t* a, int64_t lda, const int8_t* b_panel, int64_t ksteps, int col0, int32_t* c);
void amx_epilogue(const int32_t* c, int rows, int col0, int cols, const Epilogue& e);
// Loads the tile configuration on the calling thread (once per parallel task chunk) / releases it.
void amx_begin();
void amx_end();
bool cpu_has_amx();
// A short copy with AVX-512 (only call when cpu_has_vnni()).
void copy_bytes_avx512(uint8_t* dst, const uint8_t* src, int64_t n);

// Depthwise conv, one output row (n, oh) over all ow and channels; NHWC input and output.
struct DepthwiseArgs {
  const uint8_t* x;  // input image n, [H][W][C]
  const int8_t* w;   // [KH*KW][C_pad]
  const uint8_t* zero_row;  // C_pad bytes equal to the zero-point (stands in for taps outside the image)
  int64_t H, W, C, C_pad, KH, KW, OW;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int32_t x_zero_point;
};
using DepthwiseRowFn = void (*)(const DepthwiseArgs& a, int64_t oh, const Epilogue& e);
void depthwise_row_scalar(const DepthwiseArgs& a, int64_t oh, const Epilogue& e);
void depthwise_row_avx512(const DepthwiseArgs& a, int64_t oh, const Epilogue& e);
void depthwise_row_avx2(const DepthwiseArgs& a, int64_t oh, const Epilogue& e);

// The direct NHWC depthwise kernel of the VNNI path (3x3 and 5x5, any stride / padding / dilation, no
// fused residual): blocks of 64 channels, one vpdpbusd per 16 channels and tap and byte position j of a
// dword (its weight vector keeps only byte j of each dword, so lane L of accumulator j sums channel
// 4L + j: no shuffle of the activations), accumulators started at -zx * col_sum (taps outside the image
// read zero-point bytes), the epilogue on the 4 accumulators of a block, then one in-lane byte shuffle
// (uint8) or a 4 x 4 transpose (float32) back to channel order. Built per call from the packed payload
// ([taps][C_pad], which the CUDA kernel reads too) by depthwise_vnni_prepare:
struct DepthwiseVnniPlan {
  const int8_t* w;           // [blocks][taps][j = 4][64]: byte 4L + j of vector j = w[tap][64 b + 4L + j]
  const int32_t* acc_init;   // [blocks][j = 4][L = 16]: -zx * col_sum[64 b + 4L + j] (0 past C)
  const float* multiplier;   // [blocks][4][16]: sx * sw, same order
  const float* bias;         // [blocks][4][16]
  const uint8_t* zero_rows;  // W * C + 64 bytes equal to the zero-point: input rows outside the image
};
inline int64_t depthwise_vnni_blocks(int64_t C) { return (C + 63) / 64; }
// w_payload: [taps][C_pad]; zero_point_term / multiplier / bias: per channel (C values).
void depthwise_vnni_prepare(const int8_t* w_payload, int64_t C, int64_t C_pad, int64_t taps,
                            const int32_t* zero_point_term, const float* multiplier, const float* bias,
                            int8_t* w_out, int32_t* acc_init_out, float* multiplier_out, float* bias_out);
// True for the kernel sizes depthwise_row_vnni handles.
inline bool depthwise_vnni_supports(int64_t KH, int64_t KW) { return (KH == 3 && KW == 3) || (KH == 5 && KW == 5); }
// One output row (n, oh); e: only relu, requantize, inv_out_scale, out_zero_point, the output and ld_out.
void depthwise_row_vnni(const DepthwiseArgs& a, const DepthwiseVnniPlan& p, int64_t oh, const Epilogue& e);

// The 3 x 3 variant (any stride, padding, dilation): the 3 kernel rows are interleaved into the bytes of a
// dword, so one vpdpbusd does 3 taps of 16 channels (12 per pixel and 64 channels instead of 36). Each
// input column of a block's output row is interleaved once (8 byte shuffles) into a per-thread scratch
// and read by the (up to 3) output pixels that use it; the kernel's 12 weight vectors stay in registers.
// Lane 4k + i of vector m holds channel 16k + 4m + i, so the uint8 packs come out in channel order.
struct DepthwiseVnniRowsPlan {
  const int8_t* w;           // [blocks][kw = 3][m = 4][64]: dword (w[0][kw], w[1][kw], w[2][kw], 0) of a channel
  const int32_t* acc_init;   // [blocks][m = 4][16]: -zx * col_sum (0 past C)
  const float* multiplier;   // [blocks][4][16]
  const float* bias;         // [blocks][4][16]
  const uint8_t* zero_rows;  // as DepthwiseVnniPlan::zero_rows
  // 1: blocks of 64 channels. 2 or 4 (C = 32 or 16, stride_w 1): one vector holds `pixels` adjacent
  // pixels of all C channels (the weights and constants above are then prepared for 64 virtual channels,
  // channel c % C at byte c), so narrow layers use the whole vector.
  int64_t pixels;
  // false when |y / s_out| < 2^30 for every accumulator the kernel can produce (depthwise_vnni_rows_no_clamp):
  // the uint8 epilogue then skips its float clamp.
  bool clamp;
};
// |acc| <= 9 * 255 * 128 for a 3 x 3 kernel; the bound leaves a factor 2 for the float roundings.
inline bool depthwise_vnni_rows_no_clamp(int64_t C, const float* multiplier, const float* bias, float inv_out_scale) {
  for (int64_t c = 0; c < C; ++c) {
    const float bound = (293760.0f * (multiplier[c] < 0 ? -multiplier[c] : multiplier[c]) +
                         (bias[c] < 0 ? -bias[c] : bias[c])) * inv_out_scale;
    if (!(bound < 1073741824.0f)) return false;  // also false for NaN / inf
  }
  return true;
}
inline int64_t depthwise_vnni_rows_pixels(int64_t C, int64_t stride_w) {
  return stride_w == 1 && (C == 16 || C == 32) ? 64 / C : 1;
}
constexpr int64_t kDwChunk = 32;  // output columns per scratch fill
inline bool depthwise_vnni_rows_supports(int64_t KH, int64_t KW) { return KH == 3 && KW == 3; }
inline int64_t depthwise_vnni_rows_scratch_bytes(int64_t stride_w, int64_t dil_w) {
  return ((kDwChunk - 1) * stride_w + 2 * dil_w + 1) * 256 + 64;
}
void depthwise_vnni_rows_prepare(const int8_t* w_payload, int64_t C, int64_t C_pad, const int32_t* zero_point_term,
                                 const float* multiplier, const float* bias, int8_t* w_out, int32_t* acc_init_out,
                                 float* multiplier_out, float* bias_out);
// scratch: depthwise_vnni_rows_scratch_bytes bytes owned by the calling thread.
void depthwise_row_vnni_rows(const DepthwiseArgs& a, const DepthwiseVnniRowsPlan& p, int64_t oh, const Epilogue& e,
                             uint8_t* scratch);

bool cpu_has_vnni();
bool cpu_has_avx2();

}  // namespace pyquant::cpu::int8
