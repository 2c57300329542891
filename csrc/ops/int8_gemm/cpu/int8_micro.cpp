// Micro-kernels of the int8 GEMM and depthwise conv: a portable scalar path (the test oracle), an
// AVX2 path for machines without VNNI, an AVX-512 VNNI path and an AMX-INT8 tile path (Sapphire Rapids+). The vector functions carry their own
// target attributes and include no torch headers, so nothing compiled here for AVX-512 can leak into
// code that runs on older CPUs; the caller picks one with cpu_has_vnni() / cpu_has_avx2().
#include <cstring>

// GCC 12 reports false "maybe uninitialized" warnings inside its own AVX-512 intrinsic headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "int8_gemm_kernels.h"
#include "pyquant/requantize.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define PYQ_INT8_X86 1
#define PYQ_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define PYQ_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace pyquant::cpu::int8 {
namespace {

// The scalar epilogue of one accumulator (requantize.h), used by the scalar and AVX2 paths.
// The epilogue of a tile that starts `rows` rows further down.
inline Epilogue offset_rows(const Epilogue& e, int64_t rows) {
  Epilogue o = e;
  if (e.requantize) {
    o.out_u8 += rows * e.ld_out;
  } else {
    o.out_f += rows * e.ld_out;
  }
  if (e.residual != nullptr) o.residual += rows * e.ld_out;
  return o;
}

inline void store_one(const Epilogue& e, int r, int c, int32_t raw_dot) {
  const int32_t acc = raw_dot - e.zero_point_term[c];
  const bool res = e.residual != nullptr;
  const float y = int8_dequant_acc_residual(acc, e.multiplier[c], e.bias[c], res, res ? e.residual[r * e.ld_out + c] : 0,
                                            e.residual_scale, e.residual_zero_point, e.relu);
  if (e.requantize) {
    e.out_u8[r * e.ld_out + c] = int8_requantize(y, e.inv_out_scale, e.out_zero_point);
  } else {
    e.out_f[r * e.ld_out + c] = y;
  }
}

}  // namespace

void strip_panel_scalar(const uint8_t* a_strip, const int8_t* b_panel, int64_t k4, int rows, int cols,
                        const Epilogue& e) {
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      int32_t dot = 0;
      for (int64_t g = 0; g < k4; ++g) {
        const uint8_t* a = a_strip + (g * kMr + r) * 4;
        const int8_t* b = b_panel + (g * kNr + c) * 4;
        for (int j = 0; j < 4; ++j) dot += static_cast<int32_t>(a[j]) * static_cast<int32_t>(b[j]);
      }
      store_one(e, r, c, dot);
    }
  }
}

void depthwise_row_scalar(const DepthwiseArgs& a, int64_t oh, const Epilogue& e) {
  for (int64_t ow = 0; ow < a.OW; ++ow) {
    for (int64_t c = 0; c < a.C; ++c) {
      int32_t acc = 0;
      for (int64_t kh = 0; kh < a.KH; ++kh) {
        const int64_t ih = oh * a.stride_h - a.pad_h + kh * a.dil_h;
        if (ih < 0 || ih >= a.H) continue;
        for (int64_t kw = 0; kw < a.KW; ++kw) {
          const int64_t iw = ow * a.stride_w - a.pad_w + kw * a.dil_w;
          if (iw < 0 || iw >= a.W) continue;
          const int32_t xv = static_cast<int32_t>(a.x[(ih * a.W + iw) * a.C + c]) - a.x_zero_point;
          acc += xv * static_cast<int32_t>(a.w[(kh * a.KW + kw) * a.C_pad + c]);
        }
      }
      store_one(e, static_cast<int>(ow), static_cast<int>(c), acc);
    }
  }
}

namespace {

// The per-channel constants of depthwise_vnni_prepare (portable).
void depthwise_vnni_prepare_params(int64_t C, const int32_t* zero_point_term, const float* multiplier,
                                   const float* bias, int32_t* acc_init_out, float* multiplier_out,
                                   float* bias_out) {
  const int64_t blocks = depthwise_vnni_blocks(C);
  for (int64_t b = 0; b < blocks; ++b)
    for (int j = 0; j < 4; ++j)
      for (int L = 0; L < 16; ++L) {
        const int64_t c = b * 64 + 4 * L + j;
        const int64_t o = b * 64 + j * 16 + L;
        const bool ok = c < C;
        acc_init_out[o] = ok ? -zero_point_term[c] : 0;
        multiplier_out[o] = ok ? multiplier[c] : 0.0f;
        bias_out[o] = ok ? bias[c] : 0.0f;
      }
}

}  // namespace

#ifdef PYQ_INT8_X86

bool cpu_has_vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
}
bool cpu_has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// ----------------------------------------------------------------------------------------------- AVX2
namespace {

// Epilogue of 8 consecutive columns of one row: store_one's operations (requantize.h), in the same order,
// 8 lanes at a time. ReLU as max(y, 0) and the clamp as min(max(q, 0), 255) give what the scalar
// comparisons give, NaN included (vmaxps returns its second operand, 0, for a NaN lane; the scalar cast of a
// NaN on x86 is 0x80000000, whose low byte is 0 too). The scalar epilogue was about half the time of this
// path on 16-channel convolutions (K = 144), where each output's dot product is short.
PYQ_TARGET_AVX2 inline void store8_avx2(const Epilogue& e, int r, int c, __m256i dot) {
  const __m256i acc = _mm256_sub_epi32(dot, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.zero_point_term + c)));
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(e.multiplier + c));
  y = _mm256_add_ps(y, _mm256_loadu_ps(e.bias + c));
  if (e.residual != nullptr) {
    const __m128i rc = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(e.residual + r * e.ld_out + c));
    const __m256 rv = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(rc)), _mm256_set1_ps(e.residual_zero_point));
    y = _mm256_add_ps(y, _mm256_mul_ps(rv, _mm256_set1_ps(e.residual_scale)));
  }
  if (e.relu) y = _mm256_max_ps(y, _mm256_setzero_ps());
  if (e.requantize) {
    __m256 q = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(e.inv_out_scale)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_add_ps(q, _mm256_set1_ps(e.out_zero_point));
    q = _mm256_min_ps(_mm256_max_ps(q, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
    const __m256i codes = _mm256_cvtps_epi32(q);  // integral values in [0, 255]: exact
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(codes), _mm256_extracti128_si256(codes, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(e.out_u8 + r * e.ld_out + c), _mm_packus_epi16(words, words));
  } else {
    _mm256_storeu_ps(e.out_f + r * e.ld_out + c, y);
  }
}

}  // namespace

PYQ_TARGET_AVX2 void widen_row_avx2(const uint8_t* row, int64_t K, int64_t k4, int16_t* dst) {
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k),
                        _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))));
  for (; k < K; ++k) dst[k] = row[k];
  for (; k < k4 * 4; ++k) dst[k] = 0;
}

PYQ_TARGET_AVX2 void widen_panel_avx2(const int8_t* b_panel, int64_t k4, int cols, int16_t* dst) {
  const int blocks = (cols + 7) / 8;
  for (int64_t g = 0; g < k4; ++g) {
    for (int cb = 0; cb < blocks; ++cb) {
      // 8 columns x 4 values of K: 32 consecutive bytes of the [K4][64][4] panel.
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b_panel + (g * kNr + cb * 8) * 4));
      int16_t* d = dst + (cb * k4 + g) * 32;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 16), _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1)));
    }
  }
}

// A row's 4 values of K at `p`, broadcast to the 4 quadwords.
PYQ_TARGET_AVX2 inline __m256i broadcast_row_quad(const int16_t* p) {
  long long v;
  std::memcpy(&v, p, 8);
  return _mm256_set1_epi64x(v);
}

// acc += m in place. Written with the intrinsic, GCC 12 computes each sum into the product's register and
// then copies it back (one vmovdqa per accumulator and step: 8 of the loop's 33 instructions); the
// constraint keeps the accumulator in its own register.
#define PYQ_ACCUMULATE(acc, m)                                \
  do {                                                        \
    const __m256i product_ = (m);                             \
    __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(product_)); \
  } while (0)

// 4 rows x 8 columns at a time: 8 accumulators c<row><half>, each 4 columns x 2 partial sums (vpmaddwd of a
// row's 4 broadcast values of K against 4 columns' 4 values), folded with vphaddd at the end. Per group of 4
// K values: 2 weight loads, 4 broadcast loads, 8 vpmaddwd, 8 vpaddd. A 6 x 8 tile (12 accumulators) does
// not fit the 16 ymm registers with the weights and a broadcast live (GCC spilled accumulators to the stack
// in the loop). Rows are consecutive (the driver's strips back to back); the last tile reads up to 3 zero
// rows past `rows`.
PYQ_TARGET_AVX2 void rows_panel_avx2(const int16_t* a16, const int16_t* b16, int64_t k4, int rows, int cols,
                                     const Epilogue& e) {
  static_assert(kWideTileRows == 4, "the tile below is written out for 4 rows");
  const int64_t lda = k4 * 4;
  for (int r0 = 0; r0 < rows; r0 += kWideTileRows) {
    const int16_t* a0 = a16 + r0 * lda;
    const int16_t* a1 = a0 + lda;
    const int16_t* a2 = a1 + lda;
    const int16_t* a3 = a2 + lda;
    for (int c0 = 0; c0 < cols; c0 += 8) {
      const int16_t* b = b16 + (c0 / 8) * k4 * 32;
      __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
              c31 = c00;
      for (int64_t g = 0; g < k4; ++g) {
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * 32));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * 32 + 16));
        __m256i av = broadcast_row_quad(a0 + g * 4);
        PYQ_ACCUMULATE(c00, _mm256_madd_epi16(av, b0));
        PYQ_ACCUMULATE(c01, _mm256_madd_epi16(av, b1));
        av = broadcast_row_quad(a1 + g * 4);
        PYQ_ACCUMULATE(c10, _mm256_madd_epi16(av, b0));
        PYQ_ACCUMULATE(c11, _mm256_madd_epi16(av, b1));
        av = broadcast_row_quad(a2 + g * 4);
        PYQ_ACCUMULATE(c20, _mm256_madd_epi16(av, b0));
        PYQ_ACCUMULATE(c21, _mm256_madd_epi16(av, b1));
        av = broadcast_row_quad(a3 + g * 4);
        PYQ_ACCUMULATE(c30, _mm256_madd_epi16(av, b0));
        PYQ_ACCUMULATE(c31, _mm256_madd_epi16(av, b1));
      }
      // hadd -> [c0 c1 c4 c5 | c2 c3 c6 c7]; the permute puts the 8 columns in order.
      const __m256i dots[4] = {_mm256_permute4x64_epi64(_mm256_hadd_epi32(c00, c01), 0xD8),
                               _mm256_permute4x64_epi64(_mm256_hadd_epi32(c10, c11), 0xD8),
                               _mm256_permute4x64_epi64(_mm256_hadd_epi32(c20, c21), 0xD8),
                               _mm256_permute4x64_epi64(_mm256_hadd_epi32(c30, c31), 0xD8)};
      for (int r = 0; r < kWideTileRows && r0 + r < rows; ++r) {
        if (c0 + 8 <= cols) {
          store8_avx2(e, r0 + r, c0, dots[r]);
        } else {
          alignas(32) int32_t d[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(d), dots[r]);
          for (int c = c0; c < cols; ++c) store_one(e, r0 + r, c, d[c - c0]);
        }
      }
    }
  }
}
#undef PYQ_ACCUMULATE

// Depthwise on AVX2, any kernel size / stride / padding / dilation, fused residual included: 16 channels
// at a time, taps taken in pairs. The two taps' bytes are interleaved (unpack), widened to int16 and the
// zero-point subtracted ((x - zx) in [-255, 255]), and vpmaddwd against the pair's interleaved int16
// weights gives each channel's two products summed in int32 (exact: |(x - zx) w| <= 255 * 128). An odd
// last tap pairs with the zero-point row and zero weights. The epilogue is store8_avx2. Kernels of more than
// 2 * kDepthwiseAvx2MaxPairs taps (beyond 7x7) run the scalar path.
constexpr int64_t kDepthwiseAvx2MaxPairs = 25;
PYQ_TARGET_AVX2 void depthwise_row_avx2(const DepthwiseArgs& a, int64_t oh, const Epilogue& e) {
  const int64_t taps = a.KH * a.KW, pairs = (taps + 1) / 2;
  if (pairs > kDepthwiseAvx2MaxPairs) return depthwise_row_scalar(a, oh, e);
  const __m256i zx = _mm256_set1_epi16(static_cast<int16_t>(a.x_zero_point));
  __m256i w_lo[kDepthwiseAvx2MaxPairs], w_hi[kDepthwiseAvx2MaxPairs];
  const uint8_t* tap[2 * kDepthwiseAvx2MaxPairs];
  int64_t ih[2 * kDepthwiseAvx2MaxPairs];  // KH <= taps
  for (int64_t kh = 0; kh < a.KH; ++kh) ih[kh] = oh * a.stride_h - a.pad_h + kh * a.dil_h;
  alignas(32) uint8_t tail[2][16];  // a partial block's taps, zero-point padded (no byte-masked loads here)
  alignas(32) int32_t dots[16];
  for (int64_t c0 = 0; c0 < a.C; c0 += 16) {
    const int valid = static_cast<int>(a.C - c0 < 16 ? a.C - c0 : 16);
    for (int64_t q = 0; q < pairs; ++q) {  // weights: C_pad (a multiple of 64) bytes per tap, zero padded
      const __m128i wa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.w + (2 * q) * a.C_pad + c0));
      const __m128i wb = 2 * q + 1 < taps
                             ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.w + (2 * q + 1) * a.C_pad + c0))
                             : _mm_setzero_si128();
      w_lo[q] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(wa, wb));
      w_hi[q] = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(wa, wb));
    }
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      for (int64_t kh = 0; kh < a.KH; ++kh) {
        const bool row_ok = ih[kh] >= 0 && ih[kh] < a.H;
        for (int64_t kw = 0; kw < a.KW; ++kw) {
          const int64_t iw = ow * a.stride_w - a.pad_w + kw * a.dil_w;
          tap[kh * a.KW + kw] = row_ok && iw >= 0 && iw < a.W ? a.x + (ih[kh] * a.W + iw) * a.C + c0 : a.zero_row + c0;
        }
      }
      if (taps % 2) tap[taps] = a.zero_row + c0;
      __m256i acc_lo = _mm256_setzero_si256(), acc_hi = _mm256_setzero_si256();
      for (int64_t q = 0; q < pairs; ++q) {
        const uint8_t* pa = tap[2 * q];
        const uint8_t* pb = tap[2 * q + 1];
        if (valid < 16) {  // 16-byte loads past the last channel would read the next pixel, or past the image
          std::memset(tail, a.x_zero_point, sizeof(tail));
          std::memcpy(tail[0], pa, valid);
          std::memcpy(tail[1], pb, valid);
          pa = tail[0];
          pb = tail[1];
        }
        const __m128i xa = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pa));
        const __m128i xb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(pb));
        const __m256i lo = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(xa, xb)), zx);
        const __m256i hi = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(xa, xb)), zx);
        acc_lo = _mm256_add_epi32(acc_lo, _mm256_madd_epi16(lo, w_lo[q]));
        acc_hi = _mm256_add_epi32(acc_hi, _mm256_madd_epi16(hi, w_hi[q]));
      }
      const int r = static_cast<int>(ow), c = static_cast<int>(c0);
      if (valid == 16) {
        store8_avx2(e, r, c, acc_lo);
        store8_avx2(e, r, c + 8, acc_hi);
      } else {
        _mm256_store_si256(reinterpret_cast<__m256i*>(dots), acc_lo);
        _mm256_store_si256(reinterpret_cast<__m256i*>(dots + 8), acc_hi);
        for (int j = 0; j < valid; ++j) store_one(e, r, c + j, dots[j]);
      }
    }
  }
}

// --------------------------------------------------------------------------------------- AVX-512 VNNI
namespace {

// Epilogue of 16 columns (lanes) of one row; `mask` selects the valid columns. Same operations, in the
// same order, as requantize.h.
PYQ_TARGET_VNNI inline void store16(const Epilogue& e, int r, int c, __m512i dot, __mmask16 mask) {
  const __m512i acc = _mm512_sub_epi32(dot, _mm512_loadu_si512(e.zero_point_term + c));
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(e.multiplier + c));
  y = _mm512_add_ps(y, _mm512_loadu_ps(e.bias + c));
  if (e.residual != nullptr) {
    const __m128i rc = _mm_maskz_loadu_epi8(mask, e.residual + r * e.ld_out + c);
    const __m512 rv = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(rc)), _mm512_set1_ps(e.residual_zero_point));
    y = _mm512_add_ps(y, _mm512_mul_ps(rv, _mm512_set1_ps(e.residual_scale)));
  }
  if (e.relu) y = _mm512_max_ps(y, _mm512_setzero_ps());
  if (e.requantize) {
    __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(e.inv_out_scale)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_add_ps(q, _mm512_set1_ps(e.out_zero_point));
    q = _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
    const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q));
    _mm_mask_storeu_epi8(e.out_u8 + r * e.ld_out + c, mask, b);
  } else {
    _mm512_mask_storeu_ps(e.out_f + r * e.ld_out + c, mask, y);
  }
}

inline __mmask16 lane_mask(int valid) {
  return valid >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : (valid <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << valid) - 1u));
}

// 6 rows x 64 columns: 24 zmm accumulators, 4 weight vectors, 1 broadcast.
template <int kRows>
PYQ_TARGET_VNNI inline void vnni_block(const uint8_t* __restrict a_strip, const int8_t* __restrict b_panel,
                                       int64_t k4, int rows, int cols, const Epilogue& e) {
  __m512i acc[kRows][4];
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm512_setzero_si512();
  const int8_t* b = b_panel;
  const uint8_t* a = a_strip;
  for (int64_t g = 0; g < k4; ++g, b += kNr * 4, a += kMr * 4) {
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr * 4), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr * 4 + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr * 4 + 128), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr * 4 + 192), _MM_HINT_T0);
    const __m512i b0 = _mm512_loadu_si512(b);
    const __m512i b1 = _mm512_loadu_si512(b + 64);
    const __m512i b2 = _mm512_loadu_si512(b + 128);
    const __m512i b3 = _mm512_loadu_si512(b + 192);
#pragma GCC unroll 6
    for (int r = 0; r < kRows; ++r) {
      int32_t a4;
      std::memcpy(&a4, a + r * 4, 4);
      const __m512i av = _mm512_set1_epi32(a4);
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
      acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], av, b2);
      acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], av, b3);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = lane_mask(cols - q * 16);
      if (m) store16(e, r, q * 16, acc[r][q], m);
    }
  }
}

// kStrips consecutive packed strips (6 rows each, `strip_stride` bytes apart) x kCols 16-column vectors
// of one panel: the narrow-panel variant for layers with <= 32 output channels (CIFAR ResNets' 16 / 32),
// where the 6 x 64 block would spend 2-4x its multiply-adds on zero-padded columns. Still 24 (or 12)
// accumulators per broadcast stream, so the weight vectors are reused as often as in the wide block.
template <int kStrips, int kCols>
PYQ_TARGET_VNNI inline void vnni_narrow_block(const uint8_t* __restrict a_strips, int64_t strip_stride,
                                              const int8_t* __restrict b_panel, int64_t k4, int rows, int cols,
                                              const Epilogue& e) {
  constexpr int kRows = kStrips * kMr;
  __m512i acc[kRows][kCols];
#pragma GCC unroll 24
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < kCols; ++q) acc[r][q] = _mm512_setzero_si512();
  const int8_t* b = b_panel;
  for (int64_t g = 0; g < k4; ++g, b += kNr * 4) {
    __m512i bv[kCols];
#pragma GCC unroll 2
    for (int q = 0; q < kCols; ++q) bv[q] = _mm512_loadu_si512(b + q * 64);
#pragma GCC unroll 4
    for (int s = 0; s < kStrips; ++s) {
      const uint8_t* a = a_strips + s * strip_stride + g * kMr * 4;
#pragma GCC unroll 6
      for (int r = 0; r < kMr; ++r) {
        int32_t a4;
        std::memcpy(&a4, a + r * 4, 4);
        const __m512i av = _mm512_set1_epi32(a4);
#pragma GCC unroll 2
        for (int q = 0; q < kCols; ++q) acc[s * kMr + r][q] = _mm512_dpbusd_epi32(acc[s * kMr + r][q], av, bv[q]);
      }
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) break;
#pragma GCC unroll 2
    for (int q = 0; q < kCols; ++q) {
      const __mmask16 m = lane_mask(cols - q * 16);
      if (m) store16(e, r, q * 16, acc[r][q], m);
    }
  }
}

}  // namespace

PYQ_TARGET_VNNI void strips_panel_vnni_narrow(const uint8_t* a_strips, int64_t strip_stride, int strips,
                                              const int8_t* b_panel, int64_t k4, int rows, int cols,
                                              const Epilogue& e) {
  for (int s = 0; s < strips;) {
    const int left = strips - s;
    const int valid = rows - s * kMr;
    const Epilogue es = offset_rows(e, s * kMr);
    const uint8_t* a = a_strips + s * strip_stride;
    if (cols <= 16) {
      if (left >= 4) {
        vnni_narrow_block<4, 1>(a, strip_stride, b_panel, k4, valid, cols, es);
        s += 4;
      } else if (left >= 2) {
        vnni_narrow_block<2, 1>(a, strip_stride, b_panel, k4, valid, cols, es);
        s += 2;
      } else {
        vnni_narrow_block<1, 1>(a, strip_stride, b_panel, k4, valid, cols, es);
        s += 1;
      }
    } else if (left >= 2) {
      vnni_narrow_block<2, 2>(a, strip_stride, b_panel, k4, valid, cols, es);
      s += 2;
    } else {
      vnni_narrow_block<1, 2>(a, strip_stride, b_panel, k4, valid, cols, es);
      s += 1;
    }
  }
}

PYQ_TARGET_VNNI void strip_panel_vnni(const uint8_t* a_strip, const int8_t* b_panel, int64_t k4, int rows,
                                      int cols, const Epilogue& e) {
  // Short strips (the last rows of M) skip the padded rows' work.
  if (rows > 3) {
    vnni_block<6>(a_strip, b_panel, k4, rows, cols, e);
  } else if (rows > 1) {
    vnni_block<3>(a_strip, b_panel, k4, rows, cols, e);
  } else {
    vnni_block<1>(a_strip, b_panel, k4, rows, cols, e);
  }
}

// Depthwise: 16 channels per vector, (x - zx) * w in int32 (vpmulld), taps outside the image skipped
// (they would contribute (zx - zx) * w = 0). For kernels up to 3 x 3 the channel vector is the outer
// loop, so the tap weights stay in registers while the row of output pixels streams by.
namespace {

// Two taps at a time with vpdpwssd: the bytes of 32 channels of taps A and B are interleaved
// (vpunpck{l,h}bw), widened to int16 pairs (x_A[c], x_B[c]) minus the zero-point, and multiplied with
// the matching weight pairs; int32 lanes then hold channels {0-7, 16-23} and {8-15, 24-31} of the
// block and are permuted back before the epilogue. A tap outside the image reads a row of zero-point
// bytes (contributing (zx - zx) * w = 0); an odd tap count is padded with a zero-weight tap.
template <int kKH, int kKW>
PYQ_TARGET_VNNI void depthwise_row_small(const DepthwiseArgs& a, int64_t oh, const Epilogue& e) {
  constexpr int kTaps = kKH * kKW;
  constexpr int kPairs = (kTaps + 1) / 2;
  const __m512i zx = _mm512_set1_epi16(static_cast<int16_t>(a.x_zero_point));
  const __m512i idx_lo = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i idx_hi = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  int64_t ih[kKH];
  bool row_ok[kKH];
  for (int kh = 0; kh < kKH; ++kh) {
    ih[kh] = oh * a.stride_h - a.pad_h + kh * a.dil_h;
    row_ok[kh] = ih[kh] >= 0 && ih[kh] < a.H;
  }
  for (int64_t c0 = 0; c0 < a.C; c0 += 32) {
    const int valid = static_cast<int>(a.C - c0 < 32 ? a.C - c0 : 32);
    const __mmask32 lmask = valid >= 32 ? ~__mmask32{0} : ((__mmask32{1} << valid) - 1);
    __m512i w_lo[kPairs], w_hi[kPairs];
#pragma GCC unroll 13
    for (int q = 0; q < kPairs; ++q) {
      const __m256i wa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.w + (2 * q) * a.C_pad + c0));
      const __m256i wb = 2 * q + 1 < kTaps
                             ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.w + (2 * q + 1) * a.C_pad + c0))
                             : _mm256_setzero_si256();
      w_lo[q] = _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(wa, wb));
      w_hi[q] = _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(wa, wb));
    }
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      const uint8_t* tap[2 * kPairs];
#pragma GCC unroll 5
      for (int kw = 0; kw < kKW; ++kw) {
        const int64_t iw = ow * a.stride_w - a.pad_w + kw * a.dil_w;
        const bool col_ok = iw >= 0 && iw < a.W;
#pragma GCC unroll 5
        for (int kh = 0; kh < kKH; ++kh) {
          tap[kh * kKW + kw] = col_ok && row_ok[kh] ? a.x + (ih[kh] * a.W + iw) * a.C + c0 : a.zero_row + c0;
        }
      }
      if (kTaps % 2) tap[kTaps] = a.zero_row + c0;
      __m512i acc_lo = _mm512_setzero_si512(), acc_hi = _mm512_setzero_si512();
#pragma GCC unroll 13
      for (int q = 0; q < kPairs; ++q) {
        const __m256i xa = _mm256_maskz_loadu_epi8(lmask, tap[2 * q]);
        const __m256i xb = _mm256_maskz_loadu_epi8(lmask, tap[2 * q + 1]);
        const __m512i lo = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_unpacklo_epi8(xa, xb)), zx);
        const __m512i hi = _mm512_sub_epi16(_mm512_cvtepu8_epi16(_mm256_unpackhi_epi8(xa, xb)), zx);
        acc_lo = _mm512_dpwssd_epi32(acc_lo, lo, w_lo[q]);
        acc_hi = _mm512_dpwssd_epi32(acc_hi, hi, w_hi[q]);
      }
      const __m512i out0 = _mm512_permutex2var_epi32(acc_lo, idx_lo, acc_hi);
      const __m512i out1 = _mm512_permutex2var_epi32(acc_lo, idx_hi, acc_hi);
      store16(e, static_cast<int>(ow), static_cast<int>(c0), out0, lane_mask(valid));
      const __mmask16 m1 = lane_mask(valid - 16);
      if (m1) store16(e, static_cast<int>(ow), static_cast<int>(c0 + 16), out1, m1);
    }
  }
}

PYQ_TARGET_VNNI void depthwise_row_generic(const DepthwiseArgs& a, int64_t oh, const Epilogue& e) {
  const __m512i zx = _mm512_set1_epi32(a.x_zero_point);
  for (int64_t ow = 0; ow < a.OW; ++ow) {
    for (int64_t c0 = 0; c0 < a.C; c0 += 64) {
      const int valid = static_cast<int>(a.C - c0 < 64 ? a.C - c0 : 64);
      __mmask16 m[4];
      for (int q = 0; q < 4; ++q) m[q] = lane_mask(valid - q * 16);
      __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
      for (int64_t kh = 0; kh < a.KH; ++kh) {
        const int64_t ih = oh * a.stride_h - a.pad_h + kh * a.dil_h;
        if (ih < 0 || ih >= a.H) continue;
        for (int64_t kw = 0; kw < a.KW; ++kw) {
          const int64_t iw = ow * a.stride_w - a.pad_w + kw * a.dil_w;
          if (iw < 0 || iw >= a.W) continue;
          const uint8_t* xp = a.x + (ih * a.W + iw) * a.C + c0;
          const int8_t* wp = a.w + (kh * a.KW + kw) * a.C_pad + c0;
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q) {
            if (!m[q]) break;
            const __m512i xv = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m[q], xp + q * 16)), zx);
            const __m512i wv = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp + q * 16)));
            acc[q] = _mm512_add_epi32(acc[q], _mm512_mullo_epi32(xv, wv));
          }
        }
      }
      for (int q = 0; q < 4; ++q)
        if (m[q]) store16(e, static_cast<int>(ow), static_cast<int>(c0 + q * 16), acc[q], m[q]);
    }
  }
}

}  // namespace

PYQ_TARGET_VNNI void depthwise_row_avx512(const DepthwiseArgs& a, int64_t oh, const Epilogue& e) {
  if (a.KH == 3 && a.KW == 3) return depthwise_row_small<3, 3>(a, oh, e);
  if (a.KH == 5 && a.KW == 5) return depthwise_row_small<5, 5>(a, oh, e);
  depthwise_row_generic(a, oh, e);
}

// ------------------------------------------------------------------- direct depthwise (vpdpbusd, see .h)
// The weight vectors of each block and tap: the tap's 64 channel bytes with all but byte j of each
// dword cleared (the payload is zero padded to C_pad, a multiple of 64).
PYQ_TARGET_VNNI void depthwise_vnni_prepare(const int8_t* w_payload, int64_t C, int64_t C_pad, int64_t taps,
                                            const int32_t* zero_point_term, const float* multiplier,
                                            const float* bias, int8_t* w_out, int32_t* acc_init_out,
                                            float* multiplier_out, float* bias_out) {
  const int64_t blocks = depthwise_vnni_blocks(C);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t t = 0; t < taps; ++t) {
      const __m512i v = _mm512_loadu_si512(w_payload + t * C_pad + b * 64);
      int8_t* dst = w_out + (b * taps + t) * 256;
      for (int j = 0; j < 4; ++j)
        _mm512_storeu_si512(dst + j * 64, _mm512_and_si512(v, _mm512_set1_epi32(0xFF << (8 * j))));
    }
  depthwise_vnni_prepare_params(C, zero_point_term, multiplier, bias, acc_init_out, multiplier_out, bias_out);
}

namespace {

// The constants of one 64-channel block and of the call.
struct DwBlock {
  __m512i init[4];
  __m512 mult[4], bias[4];
};

// Epilogue of one pixel's 4 accumulators (lane L of acc[j] is channel c0 + 4L + j) into channel order.
// uint8: y = float(acc) * m + b (requantize.h); q = round_half_even(min(256, y / s)) in int32 (vcvtps2dq,
// round to nearest even; a value above 256 gives 255 either way, NaN and values below -2^31 give
// INT32_MIN and so 0, as the vector epilogue's clamps), then int16 with signed saturation, + z_out
// (saturating), ReLU as max(q, z_out) (quantization is monotone and maps 0 to z_out, so clamping the code
// equals clamping y), and unsigned saturation to [0, 255]. The packs leave byte 16k + 4j + i holding
// channel 16k + 4i + j: one in-lane byte shuffle restores the order.
template <bool kFull>
PYQ_TARGET_VNNI inline void dw_store_u8(const __m512i (&acc)[4], const DwBlock& blk, __m512 inv, __m512 c256,
                                        __m512i zp16, __m512i lo16, __m512i ctrl, uint8_t* out, __mmask64 mask) {
  __m512i q[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[j]), blk.mult[j]);
    y = _mm512_add_ps(y, blk.bias[j]);
    q[j] = _mm512_cvtps_epi32(_mm512_min_ps(c256, _mm512_mul_ps(y, inv)));
  }
  __m512i p01 = _mm512_adds_epi16(_mm512_packs_epi32(q[0], q[1]), zp16);
  __m512i p23 = _mm512_adds_epi16(_mm512_packs_epi32(q[2], q[3]), zp16);
  p01 = _mm512_max_epi16(p01, lo16);
  p23 = _mm512_max_epi16(p23, lo16);
  const __m512i bytes = _mm512_shuffle_epi8(_mm512_packus_epi16(p01, p23), ctrl);
  if (kFull) {
    _mm512_storeu_si512(out, bytes);
  } else {
    _mm512_mask_storeu_epi8(out, mask, bytes);
  }
}

// Stores 64 floats: 128-bit lane k of src[m] to out[16 k + 4 m ..] -- a 4 x 4 transpose of the 128-bit lanes
// (shared by both depthwise kernels' float32 epilogues); only the first ``valid`` floats unless kFull.
template <bool kFull>
PYQ_TARGET_VNNI inline void store_f32_lanes_transposed(const __m512 (&src)[4], float* out, int valid) {
  const __m512 u01a = _mm512_shuffle_f32x4(src[0], src[1], 0x44), u23a = _mm512_shuffle_f32x4(src[2], src[3], 0x44);
  const __m512 u01b = _mm512_shuffle_f32x4(src[0], src[1], 0xEE), u23b = _mm512_shuffle_f32x4(src[2], src[3], 0xEE);
  const __m512 v[4] = {_mm512_shuffle_f32x4(u01a, u23a, 0x88), _mm512_shuffle_f32x4(u01a, u23a, 0xDD),
                       _mm512_shuffle_f32x4(u01b, u23b, 0x88), _mm512_shuffle_f32x4(u01b, u23b, 0xDD)};
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    if (kFull) {
      _mm512_storeu_ps(out + 16 * k, v[k]);
    } else {
      const __mmask16 m = lane_mask(valid - 16 * k);
      if (m) _mm512_mask_storeu_ps(out + 16 * k, m, v[k]);
    }
  }
}

// float32: y (with ReLU as requantize.h: max(y, 0)), then a 4 x 4 transpose of floats inside each
// 128-bit lane (t_i lane k = channels 16k + 4i .. + 3) and one of the 128-bit lanes (V_k = channels
// 16k .. 16k + 15).
template <bool kFull>
PYQ_TARGET_VNNI inline void dw_store_f32(const __m512i (&acc)[4], const DwBlock& blk, bool relu, float* out,
                                         int valid) {
  __m512 y[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    y[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[j]), blk.mult[j]);
    y[j] = _mm512_add_ps(y[j], blk.bias[j]);
    if (relu) y[j] = _mm512_max_ps(y[j], _mm512_setzero_ps());
  }
  const __m512 lo01 = _mm512_unpacklo_ps(y[0], y[1]), hi01 = _mm512_unpackhi_ps(y[0], y[1]);
  const __m512 lo23 = _mm512_unpacklo_ps(y[2], y[3]), hi23 = _mm512_unpackhi_ps(y[2], y[3]);
  const __m512 t0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(lo01), _mm512_castps_pd(lo23)));
  const __m512 t1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(lo01), _mm512_castps_pd(lo23)));
  const __m512 t2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(hi01), _mm512_castps_pd(hi23)));
  const __m512 t3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(hi01), _mm512_castps_pd(hi23)));
  store_f32_lanes_transposed<kFull>({t0, t1, t2, t3}, out, valid);
}

// The accumulators of one pixel and block: tap t's 64 channel bytes start at tap[t].
template <int kTaps, bool kFull>
PYQ_TARGET_VNNI inline void dw_accumulate(const uint8_t* const (&tap)[kTaps], const int8_t* __restrict wb,
                                          const DwBlock& blk, __mmask64 mask, __m512i (&acc)[4]) {
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) acc[j] = blk.init[j];
#pragma GCC unroll 25
  for (int t = 0; t < kTaps; ++t) {
    const __m512i xv = kFull ? _mm512_loadu_si512(tap[t]) : _mm512_maskz_loadu_epi8(mask, tap[t]);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm512_dpbusd_epi32(acc[j], xv, _mm512_loadu_si512(wb + (t * 4 + j) * 64));
  }
}

// The call's epilogue constants and one block's output position.
struct DwOut {
  __m512 inv, c256;
  __m512i zp16, lo16, ctrl;
  int64_t c0;
  int valid;
  __mmask64 mask;
};

// Accumulate and store one output pixel ow of a block (no lambdas here: they would not inherit the
// target attribute).
template <int kTaps, bool kFull>
PYQ_TARGET_VNNI inline void dw_pixel(const uint8_t* const (&tap)[kTaps], const int8_t* __restrict wb,
                                     const DwBlock& blk, const DwOut& o, const Epilogue& e, int64_t ow) {
  __m512i acc[4];
  dw_accumulate<kTaps, kFull>(tap, wb, blk, o.mask, acc);
  if (e.requantize) {
    dw_store_u8<kFull>(acc, blk, o.inv, o.c256, o.zp16, o.lo16, o.ctrl, e.out_u8 + ow * e.ld_out + o.c0, o.mask);
  } else {
    dw_store_f32<kFull>(acc, blk, e.relu, e.out_f + ow * e.ld_out + o.c0, o.valid);
  }
}

// Border pixels: taps outside the image's columns read zero-point bytes.
template <int kKH, int kKW, bool kFull>
PYQ_TARGET_VNNI inline void dw_border_pixel(const DepthwiseArgs& a, const DepthwiseVnniPlan& p,
                                            const uint8_t* const (&rb)[kKH], const int8_t* __restrict wb,
                                            const DwBlock& blk, const DwOut& o, const Epilogue& e, int64_t ow) {
  const uint8_t* tap[kKH * kKW];
  for (int kw = 0; kw < kKW; ++kw) {
    const int64_t iw = ow * a.stride_w - a.pad_w + kw * a.dil_w;
    const bool ok = iw >= 0 && iw < a.W;
    for (int kh = 0; kh < kKH; ++kh) tap[kh * kKW + kw] = ok ? rb[kh] + iw * a.C + o.c0 : p.zero_rows + o.c0;
  }
  dw_pixel<kKH * kKW, kFull>(tap, wb, blk, o, e, ow);
}

// Two pixels at once: each weight vector is loaded once for both, and the two pixels' 8 accumulator
// chains (9 dependent vpdpbusd each for 3 x 3) interleave.
template <int kTaps, bool kFull>
PYQ_TARGET_VNNI inline void dw_pixel2(const uint8_t* const (&tap)[kTaps], int64_t next, const int8_t* __restrict wb,
                                      const DwBlock& blk, const DwOut& o, const Epilogue& e, int64_t ow) {
  __m512i acc0[4], acc1[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) acc0[j] = acc1[j] = blk.init[j];
#pragma GCC unroll 25
  for (int t = 0; t < kTaps; ++t) {
    const __m512i x0 = kFull ? _mm512_loadu_si512(tap[t]) : _mm512_maskz_loadu_epi8(o.mask, tap[t]);
    const __m512i x1 = kFull ? _mm512_loadu_si512(tap[t] + next) : _mm512_maskz_loadu_epi8(o.mask, tap[t] + next);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i w = _mm512_loadu_si512(wb + (t * 4 + j) * 64);
      acc0[j] = _mm512_dpbusd_epi32(acc0[j], x0, w);
      acc1[j] = _mm512_dpbusd_epi32(acc1[j], x1, w);
    }
  }
  if (e.requantize) {
    uint8_t* out = e.out_u8 + ow * e.ld_out + o.c0;
    dw_store_u8<kFull>(acc0, blk, o.inv, o.c256, o.zp16, o.lo16, o.ctrl, out, o.mask);
    dw_store_u8<kFull>(acc1, blk, o.inv, o.c256, o.zp16, o.lo16, o.ctrl, out + e.ld_out, o.mask);
  } else {
    float* out = e.out_f + ow * e.ld_out + o.c0;
    dw_store_f32<kFull>(acc0, blk, e.relu, out, o.valid);
    dw_store_f32<kFull>(acc1, blk, e.relu, out + e.ld_out, o.valid);
  }
}

template <int kKH, int kKW, bool kFull>
PYQ_TARGET_VNNI void dw_block_row(const DepthwiseArgs& a, const DepthwiseVnniPlan& p, const Epilogue& e,
                                  const uint8_t* const (&rb)[kKH], int64_t ow_lo, int64_t ow_hi, int64_t b) {
  constexpr int kTaps = kKH * kKW;
  DwOut o;
  o.c0 = b * 64;
  o.valid = static_cast<int>(a.C - o.c0 < 64 ? a.C - o.c0 : 64);
  o.mask = o.valid >= 64 ? ~__mmask64{0} : ((__mmask64{1} << o.valid) - 1);
  o.inv = _mm512_set1_ps(e.inv_out_scale);
  o.c256 = _mm512_set1_ps(256.0f);
  o.zp16 = _mm512_set1_epi16(static_cast<int16_t>(e.out_zero_point));
  o.lo16 = e.relu ? o.zp16 : _mm512_set1_epi16(INT16_MIN);
  // Byte 4i + j of each 16-byte lane takes byte 4j + i: {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15}.
  constexpr int d0 = 0x0C080400, d1 = 0x0D090501, d2 = 0x0E0A0602, d3 = 0x0F0B0703;
  o.ctrl = _mm512_setr_epi32(d0, d1, d2, d3, d0, d1, d2, d3, d0, d1, d2, d3, d0, d1, d2, d3);
  DwBlock blk;
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    blk.init[j] = _mm512_loadu_si512(p.acc_init + b * 64 + j * 16);
    blk.mult[j] = _mm512_loadu_ps(p.multiplier + b * 64 + j * 16);
    blk.bias[j] = _mm512_loadu_ps(p.bias + b * 64 + j * 16);
  }
  const int8_t* wb = p.w + b * kTaps * 256;
  const int64_t C = a.C;
  const int64_t col_step = a.dil_w * C;
  for (int64_t ow = 0; ow < ow_lo; ++ow) dw_border_pixel<kKH, kKW, kFull>(a, p, rb, wb, blk, o, e, ow);
  const int64_t next = a.stride_w * C;  // the next output pixel's taps
  for (int64_t ow = ow_lo; ow < ow_hi; ow += 2) {
    const int64_t q = (ow * a.stride_w - a.pad_w) * C + o.c0;
    const uint8_t* tap[kTaps];
#pragma GCC unroll 5
    for (int kh = 0; kh < kKH; ++kh)
#pragma GCC unroll 5
      for (int kw = 0; kw < kKW; ++kw) tap[kh * kKW + kw] = rb[kh] + q + kw * col_step;
    if (ow + 1 < ow_hi) {
      dw_pixel2<kTaps, kFull>(tap, next, wb, blk, o, e, ow);
    } else {
      dw_pixel<kTaps, kFull>(tap, wb, blk, o, e, ow);
    }
  }
  for (int64_t ow = ow_hi; ow < a.OW; ++ow) dw_border_pixel<kKH, kKW, kFull>(a, p, rb, wb, blk, o, e, ow);
}

template <int kKH, int kKW>
PYQ_TARGET_VNNI void dw_row(const DepthwiseArgs& a, const DepthwiseVnniPlan& p, int64_t oh, const Epilogue& e) {
  const uint8_t* rb[kKH];
  for (int kh = 0; kh < kKH; ++kh) {
    const int64_t ih = oh * a.stride_h - a.pad_h + kh * a.dil_h;
    rb[kh] = ih >= 0 && ih < a.H ? a.x + ih * a.W * a.C : p.zero_rows;
  }
  // Output columns whose taps all lie inside the image: ow * sw - pw >= 0 and
  // ow * sw - pw + (KW - 1) * dw <= W - 1.
  int64_t ow_lo = (a.pad_w + a.stride_w - 1) / a.stride_w;
  const int64_t last = a.W - 1 - (kKW - 1) * a.dil_w + a.pad_w;
  int64_t ow_hi = last < 0 ? 0 : last / a.stride_w + 1;
  ow_lo = ow_lo < a.OW ? ow_lo : a.OW;
  ow_hi = ow_hi < a.OW ? ow_hi : a.OW;
  if (ow_hi < ow_lo) ow_hi = ow_lo;
  const int64_t blocks = depthwise_vnni_blocks(a.C);
  for (int64_t b = 0; b < blocks; ++b) {
    if (a.C - b * 64 >= 64) {
      dw_block_row<kKH, kKW, true>(a, p, e, rb, ow_lo, ow_hi, b);
    } else {
      dw_block_row<kKH, kKW, false>(a, p, e, rb, ow_lo, ow_hi, b);
    }
  }
}

// ---- the 3 x 3 row-interleaved variant (DepthwiseVnniRowsPlan)

// dword lane 4k + i of out[m] = (r0[c], r1[c], r2[c], r2[c]) of byte c = 16k + 4m + i of the three rows.
PYQ_TARGET_VNNI inline void dw_interleave3(__m512i r0, __m512i r1, __m512i r2, __m512i (&out)[4]) {
  const __m512i a_lo = _mm512_unpacklo_epi8(r0, r1), a_hi = _mm512_unpackhi_epi8(r0, r1);
  const __m512i b_lo = _mm512_unpacklo_epi8(r2, r2), b_hi = _mm512_unpackhi_epi8(r2, r2);
  out[0] = _mm512_unpacklo_epi16(a_lo, b_lo);
  out[1] = _mm512_unpackhi_epi16(a_lo, b_lo);
  out[2] = _mm512_unpacklo_epi16(a_hi, b_hi);
  out[3] = _mm512_unpackhi_epi16(a_hi, b_hi);
}

// uint8 epilogue as dw_store_u8, for accumulators already in channel order after the packs.
// kClamp false: the caller proved |y / s_out| < 2^30 for every possible accumulator, so vcvtps2dq is
// exact without the min (int16 saturation still maps everything above 255 to 255).
template <bool kFull, bool kClamp = true>
PYQ_TARGET_VNNI inline void dw_rows_store_u8(const __m512i (&acc)[4], const DwBlock& blk, const DwOut& o,
                                             uint8_t* out) {
  __m512i q[4];
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[m]), blk.mult[m]);
    y = _mm512_add_ps(y, blk.bias[m]);
    const __m512 v = _mm512_mul_ps(y, o.inv);
    q[m] = _mm512_cvtps_epi32(kClamp ? _mm512_min_ps(o.c256, v) : v);
  }
  __m512i p01 = _mm512_adds_epi16(_mm512_packs_epi32(q[0], q[1]), o.zp16);
  __m512i p23 = _mm512_adds_epi16(_mm512_packs_epi32(q[2], q[3]), o.zp16);
  p01 = _mm512_max_epi16(p01, o.lo16);
  p23 = _mm512_max_epi16(p23, o.lo16);
  const __m512i bytes = _mm512_packus_epi16(p01, p23);
  if (kFull) {
    _mm512_storeu_si512(out, bytes);
  } else {
    _mm512_mask_storeu_epi8(out, o.mask, bytes);
  }
}

// float32: 128-bit lane k of y[m] holds channels 16k + 4m .. + 3; a 4 x 4 transpose of the 128-bit lanes.
template <bool kFull>
PYQ_TARGET_VNNI inline void dw_rows_store_f32(const __m512i (&acc)[4], const DwBlock& blk, bool relu, float* out,
                                              int valid) {
  __m512 y[4];
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    y[m] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[m]), blk.mult[m]);
    y[m] = _mm512_add_ps(y[m], blk.bias[m]);
    if (relu) y[m] = _mm512_max_ps(y[m], _mm512_setzero_ps());
  }
  store_f32_lanes_transposed<kFull>(y, out, valid);
}

template <bool kFull, bool kClamp>
PYQ_TARGET_VNNI void dw_rows_block_row(const DepthwiseArgs& a, const DepthwiseVnniRowsPlan& p, const Epilogue& e,
                                       const uint8_t* const (&rb)[3], int64_t b, uint8_t* __restrict scratch,
                                       const uint8_t* pf, int64_t pf_rows) {
  DwOut o;
  o.c0 = b * 64;
  o.valid = static_cast<int>(a.C - o.c0 < 64 ? a.C - o.c0 : 64);
  o.mask = o.valid >= 64 ? ~__mmask64{0} : ((__mmask64{1} << o.valid) - 1);
  o.inv = _mm512_set1_ps(e.inv_out_scale);
  o.c256 = _mm512_set1_ps(256.0f);
  o.zp16 = _mm512_set1_epi16(static_cast<int16_t>(e.out_zero_point));
  o.lo16 = e.relu ? o.zp16 : _mm512_set1_epi16(INT16_MIN);
  DwBlock blk;
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    blk.init[m] = _mm512_loadu_si512(p.acc_init + b * 64 + m * 16);
    blk.mult[m] = _mm512_loadu_ps(p.multiplier + b * 64 + m * 16);
    blk.bias[m] = _mm512_loadu_ps(p.bias + b * 64 + m * 16);
  }
  __m512i wr[3][4];
#pragma GCC unroll 3
  for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 4
    for (int m = 0; m < 4; ++m) wr[kw][m] = _mm512_loadu_si512(p.w + ((b * 3 + kw) * 4 + m) * 64);
  const __m512i zx_col = _mm512_set1_epi8(static_cast<char>(a.x_zero_point));
  const int64_t C = a.C, sw = a.stride_w, dw = a.dil_w;
  __m512i* const col = reinterpret_cast<__m512i*>(scratch);
  for (int64_t ow0 = 0; ow0 < a.OW; ow0 += kDwChunk) {
    const int64_t ow1 = ow0 + kDwChunk < a.OW ? ow0 + kDwChunk : a.OW;
    // Interleave the chunk's input columns (zero-point bytes outside the image).
    const int64_t iw0 = ow0 * sw - a.pad_w;
    const int64_t ncols = (ow1 - 1 - ow0) * sw + 2 * dw + 1;
    for (int64_t j = 0; j < ncols; ++j) {
      const int64_t iw = iw0 + j;
      if (iw < 0 || iw >= a.W) {
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) _mm512_store_si512(col + j * 4 + m, zx_col);
        continue;
      }
      const int64_t off = iw * C + o.c0;
      // The input rows the next output row adds, one column ahead (the first block of the row only).
      if (pf != nullptr)
        for (int64_t r = 0; r < pf_rows; ++r)
          for (int64_t q = 0; q < C; q += 64)
            _mm_prefetch(reinterpret_cast<const char*>(pf + r * a.W * C + iw * C + q), _MM_HINT_T1);
      __m512i r[3];
#pragma GCC unroll 3
      for (int kh = 0; kh < 3; ++kh)
        r[kh] = kFull ? _mm512_loadu_si512(rb[kh] + off) : _mm512_maskz_loadu_epi8(o.mask, rb[kh] + off);
      __m512i d[4];
      dw_interleave3(r[0], r[1], r[2], d);
#pragma GCC unroll 4
      for (int m = 0; m < 4; ++m) _mm512_store_si512(col + j * 4 + m, d[m]);
    }
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const __m512i* c = col + (ow - ow0) * sw * 4;
      __m512i acc[4];
#pragma GCC unroll 4
      for (int m = 0; m < 4; ++m) acc[m] = blk.init[m];
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_load_si512(c + kw * dw * 4 + m), wr[kw][m]);
      if (e.requantize) {
        dw_rows_store_u8<kFull, kClamp>(acc, blk, o, e.out_u8 + ow * e.ld_out + o.c0);
      } else {
        dw_rows_store_f32<kFull>(acc, blk, e.relu, e.out_f + ow * e.ld_out + o.c0, o.valid);
      }
    }
  }
}

// The last block when it has <= 32 channels: the same kernel on 256-bit vectors (the low halves of the
// block's weight and constant vectors hold its channels 0-31 in the same order), so a 16- or 32-channel
// tail (C = 96, 144, ...) costs half a block; 256-bit ops also issue on one more port.
PYQ_TARGET_VNNI void dw_rows_tail_row(const DepthwiseArgs& a, const DepthwiseVnniRowsPlan& p, const Epilogue& e,
                                      const uint8_t* const (&rb)[3], int64_t b, uint8_t* __restrict scratch) {
  const int64_t c0 = b * 64;
  const int valid = static_cast<int>(a.C - c0);  // 1 .. 32
  const __mmask32 mask = valid >= 32 ? ~__mmask32{0} : ((__mmask32{1} << valid) - 1);
  const __m256 inv = _mm256_set1_ps(e.inv_out_scale), c256 = _mm256_set1_ps(256.0f);
  const __m256i zp16 = _mm256_set1_epi16(static_cast<int16_t>(e.out_zero_point));
  const __m256i lo16 = e.relu ? zp16 : _mm256_set1_epi16(INT16_MIN);
  __m256i init[4], wr[3][4];
  __m256 mult[4], bias[4];
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    init[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.acc_init + b * 64 + m * 16));
    mult[m] = _mm256_loadu_ps(p.multiplier + b * 64 + m * 16);
    bias[m] = _mm256_loadu_ps(p.bias + b * 64 + m * 16);
  }
#pragma GCC unroll 3
  for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 4
    for (int m = 0; m < 4; ++m)
      wr[kw][m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + ((b * 3 + kw) * 4 + m) * 64));
  const __m256i zx_col = _mm256_set1_epi8(static_cast<char>(a.x_zero_point));
  const int64_t C = a.C, sw = a.stride_w, dw = a.dil_w;
  __m256i* const col = reinterpret_cast<__m256i*>(scratch);
  for (int64_t ow0 = 0; ow0 < a.OW; ow0 += kDwChunk) {
    const int64_t ow1 = ow0 + kDwChunk < a.OW ? ow0 + kDwChunk : a.OW;
    const int64_t iw0 = ow0 * sw - a.pad_w;
    const int64_t ncols = (ow1 - 1 - ow0) * sw + 2 * dw + 1;
    for (int64_t j = 0; j < ncols; ++j) {
      const int64_t iw = iw0 + j;
      if (iw < 0 || iw >= a.W) {
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) _mm256_store_si256(col + j * 4 + m, zx_col);
        continue;
      }
      const int64_t off = iw * C + c0;
      const __m256i r0 = _mm256_maskz_loadu_epi8(mask, rb[0] + off);
      const __m256i r1 = _mm256_maskz_loadu_epi8(mask, rb[1] + off);
      const __m256i r2 = _mm256_maskz_loadu_epi8(mask, rb[2] + off);
      const __m256i a_lo = _mm256_unpacklo_epi8(r0, r1), a_hi = _mm256_unpackhi_epi8(r0, r1);
      const __m256i b_lo = _mm256_unpacklo_epi8(r2, r2), b_hi = _mm256_unpackhi_epi8(r2, r2);
      _mm256_store_si256(col + j * 4 + 0, _mm256_unpacklo_epi16(a_lo, b_lo));
      _mm256_store_si256(col + j * 4 + 1, _mm256_unpackhi_epi16(a_lo, b_lo));
      _mm256_store_si256(col + j * 4 + 2, _mm256_unpacklo_epi16(a_hi, b_hi));
      _mm256_store_si256(col + j * 4 + 3, _mm256_unpackhi_epi16(a_hi, b_hi));
    }
    for (int64_t ow = ow0; ow < ow1; ++ow) {
      const __m256i* c = col + (ow - ow0) * sw * 4;
      __m256i acc[4];
#pragma GCC unroll 4
      for (int m = 0; m < 4; ++m) acc[m] = init[m];
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) acc[m] = _mm256_dpbusd_epi32(acc[m], _mm256_load_si256(c + kw * dw * 4 + m), wr[kw][m]);
      if (e.requantize) {
        __m256i q[4];
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) {
          __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[m]), mult[m]);
          y = _mm256_add_ps(y, bias[m]);
          q[m] = _mm256_cvtps_epi32(_mm256_min_ps(c256, _mm256_mul_ps(y, inv)));
        }
        __m256i p01 = _mm256_adds_epi16(_mm256_packs_epi32(q[0], q[1]), zp16);
        __m256i p23 = _mm256_adds_epi16(_mm256_packs_epi32(q[2], q[3]), zp16);
        p01 = _mm256_max_epi16(p01, lo16);
        p23 = _mm256_max_epi16(p23, lo16);
        _mm256_mask_storeu_epi8(e.out_u8 + ow * e.ld_out + c0, mask, _mm256_packus_epi16(p01, p23));
      } else {
        __m256 y[4];
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) {
          y[m] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[m]), mult[m]);
          y[m] = _mm256_add_ps(y[m], bias[m]);
          if (e.relu) y[m] = _mm256_max_ps(y[m], _mm256_setzero_ps());
        }
        // 128-bit lane k of y[m] holds channels 16k + 4m .. + 3.
        const __m256 v[4] = {_mm256_permute2f128_ps(y[0], y[1], 0x20), _mm256_permute2f128_ps(y[2], y[3], 0x20),
                             _mm256_permute2f128_ps(y[0], y[1], 0x31), _mm256_permute2f128_ps(y[2], y[3], 0x31)};
        float* out = e.out_f + ow * e.ld_out + c0;
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const int left = valid - 8 * q;
          if (left <= 0) break;
          _mm256_mask_storeu_ps(out + 8 * q, left >= 8 ? __mmask8{0xFF} : static_cast<__mmask8>((1u << left) - 1u),
                                v[q]);
        }
      }
    }
  }
}

// pixels > 1: vector v of the row holds output pixels v * P .. v * P + P - 1 (all C channels each, P * C
// = 64 bytes); its input column at kernel column kw is the 64 bytes from input pixel v * P - pw + kw * dw
// (stride 1), with the bytes of pixels outside the image replaced by zero-point bytes.
template <bool kClamp>
PYQ_TARGET_VNNI void dw_rows_packed_row(const DepthwiseArgs& a, const DepthwiseVnniRowsPlan& p, const Epilogue& e,
                                        const uint8_t* const (&rb)[3], uint8_t* __restrict scratch) {
  const int64_t P = p.pixels, C = a.C, dw = a.dil_w;
  DwOut o;
  o.c0 = 0;
  o.valid = 64;
  o.mask = ~__mmask64{0};
  o.inv = _mm512_set1_ps(e.inv_out_scale);
  o.c256 = _mm512_set1_ps(256.0f);
  o.zp16 = _mm512_set1_epi16(static_cast<int16_t>(e.out_zero_point));
  o.lo16 = e.relu ? o.zp16 : _mm512_set1_epi16(INT16_MIN);
  DwBlock blk;
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {
    blk.init[m] = _mm512_loadu_si512(p.acc_init + m * 16);
    blk.mult[m] = _mm512_loadu_ps(p.multiplier + m * 16);
    blk.bias[m] = _mm512_loadu_ps(p.bias + m * 16);
  }
  __m512i wr[3][4];
#pragma GCC unroll 3
  for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 4
    for (int m = 0; m < 4; ++m) wr[kw][m] = _mm512_loadu_si512(p.w + (kw * 4 + m) * 64);
  const __m512i zx_col = _mm512_set1_epi8(static_cast<char>(a.x_zero_point));
  __m512i* const col = reinterpret_cast<__m512i*>(scratch);
  const int64_t NV = (a.OW + P - 1) / P;
  const int64_t chunk = kDwChunk / P;  // vectors per scratch fill: at most kDwChunk + 2 dw columns
  for (int64_t v0 = 0; v0 < NV; v0 += chunk) {
    const int64_t v1 = v0 + chunk < NV ? v0 + chunk : NV;
    const int64_t iw0 = v0 * P - a.pad_w;
    const int64_t ncols = (v1 - 1 - v0) * P + 2 * dw + 1;
    for (int64_t j = 0; j < ncols; ++j) {
      const int64_t iw = iw0 + j;  // first input pixel of the column
      const int64_t lo = iw < 0 ? -iw : 0;
      const int64_t hi = a.W - iw < P ? a.W - iw : P;  // pixels [lo, hi) of the column lie in the image
      if (hi <= lo) {
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) _mm512_store_si512(col + j * 4 + m, zx_col);
        continue;
      }
      const __mmask64 in = (hi * C >= 64 ? ~__mmask64{0} : ((__mmask64{1} << (hi * C)) - 1)) &
                           ~((__mmask64{1} << (lo * C)) - 1);
      __m512i r[3];
#pragma GCC unroll 3
      for (int kh = 0; kh < 3; ++kh) {
        // The column may start before the row (iw < 0): its masked-off bytes are not read (AVX-512 masked
        // loads do not fault on them).
        const auto* src = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(rb[kh]) + iw * C);
        r[kh] = _mm512_mask_loadu_epi8(zx_col, in, src);
      }
      __m512i d[4];
      dw_interleave3(r[0], r[1], r[2], d);
#pragma GCC unroll 4
      for (int m = 0; m < 4; ++m) _mm512_store_si512(col + j * 4 + m, d[m]);
    }
    for (int64_t v = v0; v < v1; ++v) {
      const __m512i* c = col + (v - v0) * P * 4;
      __m512i acc[4];
#pragma GCC unroll 4
      for (int m = 0; m < 4; ++m) acc[m] = blk.init[m];
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 4
        for (int m = 0; m < 4; ++m) acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_load_si512(c + kw * dw * 4 + m), wr[kw][m]);
      const int64_t px = a.OW - v * P < P ? a.OW - v * P : P;
      const int64_t ow = v * P;
      if (px == P) {
        if (e.requantize) {
          dw_rows_store_u8<true, kClamp>(acc, blk, o, e.out_u8 + ow * e.ld_out);
        } else {
          dw_rows_store_f32<true>(acc, blk, e.relu, e.out_f + ow * e.ld_out, 64);
        }
      } else {
        DwOut ot = o;
        ot.valid = static_cast<int>(px * C);
        ot.mask = (__mmask64{1} << (px * C)) - 1;
        if (e.requantize) {
          dw_rows_store_u8<false>(acc, blk, ot, e.out_u8 + ow * e.ld_out);
        } else {
          dw_rows_store_f32<false>(acc, blk, e.relu, e.out_f + ow * e.ld_out, ot.valid);
        }
      }
    }
  }
}

}  // namespace

PYQ_TARGET_VNNI void depthwise_vnni_rows_prepare(const int8_t* w_payload, int64_t C, int64_t C_pad,
                                                 const int32_t* zero_point_term, const float* multiplier,
                                                 const float* bias, int8_t* w_out, int32_t* acc_init_out,
                                                 float* multiplier_out, float* bias_out) {
  const int64_t blocks = depthwise_vnni_blocks(C);
  for (int64_t b = 0; b < blocks; ++b) {
    for (int kw = 0; kw < 3; ++kw) {
      // Taps (kh, kw) of the payload [kh * 3 + kw][C_pad]; the filler byte's weight is 0.
      const __m512i r0 = _mm512_loadu_si512(w_payload + (0 * 3 + kw) * C_pad + b * 64);
      const __m512i r1 = _mm512_loadu_si512(w_payload + (1 * 3 + kw) * C_pad + b * 64);
      const __m512i r2 = _mm512_loadu_si512(w_payload + (2 * 3 + kw) * C_pad + b * 64);
      const __m512i a_lo = _mm512_unpacklo_epi8(r0, r1), a_hi = _mm512_unpackhi_epi8(r0, r1);
      const __m512i z = _mm512_setzero_si512();
      const __m512i b_lo = _mm512_unpacklo_epi8(r2, z), b_hi = _mm512_unpackhi_epi8(r2, z);
      const __m512i d[4] = {_mm512_unpacklo_epi16(a_lo, b_lo), _mm512_unpackhi_epi16(a_lo, b_lo),
                            _mm512_unpacklo_epi16(a_hi, b_hi), _mm512_unpackhi_epi16(a_hi, b_hi)};
      for (int m = 0; m < 4; ++m) _mm512_storeu_si512(w_out + ((b * 3 + kw) * 4 + m) * 64, d[m]);
    }
    for (int m = 0; m < 4; ++m)
      for (int L = 0; L < 16; ++L) {
        const int64_t c = b * 64 + 16 * (L / 4) + 4 * m + L % 4;
        const int64_t o = b * 64 + m * 16 + L;
        const bool ok = c < C;
        acc_init_out[o] = ok ? -zero_point_term[c] : 0;
        multiplier_out[o] = ok ? multiplier[c] : 0.0f;
        bias_out[o] = ok ? bias[c] : 0.0f;
      }
  }
}

PYQ_TARGET_VNNI void depthwise_row_vnni_rows(const DepthwiseArgs& a, const DepthwiseVnniRowsPlan& p, int64_t oh,
                                             const Epilogue& e, uint8_t* scratch) {
  const uint8_t* rb[3];
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t ih = oh * a.stride_h - a.pad_h + kh * a.dil_h;
    rb[kh] = ih >= 0 && ih < a.H ? a.x + ih * a.W * a.C : p.zero_rows;
  }
  uint8_t* col = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
  if (p.pixels > 1) {
    return p.clamp ? dw_rows_packed_row<true>(a, p, e, rb, col) : dw_rows_packed_row<false>(a, p, e, rb, col);
  }
  // Rows ih2 + 1 .. ih2 + stride_h (ih2: this row's last kernel row) that lie in the image.
  const int64_t ih2 = oh * a.stride_h - a.pad_h + 2 * a.dil_h;
  const int64_t pf_first = ih2 + 1 < 0 ? 0 : ih2 + 1;
  const int64_t pf_last = ih2 + a.stride_h < a.H - 1 ? ih2 + a.stride_h : a.H - 1;
  const uint8_t* pf = pf_last >= pf_first ? a.x + pf_first * a.W * a.C : nullptr;
  const int64_t pf_rows = pf_last - pf_first + 1;
  const int64_t blocks = depthwise_vnni_blocks(a.C);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* pfb = b == 0 ? pf : nullptr;
    if (a.C - b * 64 >= 64) {
      if (p.clamp) {
        dw_rows_block_row<true, true>(a, p, e, rb, b, col, pfb, pf_rows);
      } else {
        dw_rows_block_row<true, false>(a, p, e, rb, b, col, pfb, pf_rows);
      }
    } else if (a.C - b * 64 <= 32) {
      dw_rows_tail_row(a, p, e, rb, b, col);
    } else {
      dw_rows_block_row<false, true>(a, p, e, rb, b, col, pfb, pf_rows);
    }
  }
}

PYQ_TARGET_VNNI void depthwise_row_vnni(const DepthwiseArgs& a, const DepthwiseVnniPlan& p, int64_t oh,
                                        const Epilogue& e) {
  if (a.KH == 3 && a.KW == 3) return dw_row<3, 3>(a, p, oh, e);
  if (a.KH == 5 && a.KW == 5) return dw_row<5, 5>(a, p, oh, e);
}

// im2col runs: 64 bytes per instruction (masked tail) instead of the 16 of the baseline build.
PYQ_TARGET_VNNI void copy_bytes_avx512(uint8_t* dst, const uint8_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) _mm512_storeu_si512(dst + i, _mm512_loadu_si512(src + i));
  if (i < n) {
    const __mmask64 m = (n - i) >= 64 ? ~__mmask64{0} : ((__mmask64{1} << (n - i)) - 1);
    _mm512_mask_storeu_epi8(dst + i, m, _mm512_maskz_loadu_epi8(m, src + i));
  }
}

// ------------------------------------------------------------------------------------------------ AMX
// TDPBUSD multiplies a 16 x 64 u8 tile by a 16 x (16 x 4) s8 tile into 16 x 16 int32: the B tile is
// 16 consecutive K-groups of 16 columns of a weight panel, i.e. the panel layout read with a row
// stride of 256 bytes. 2 x 2 accumulator tiles give a 32 x 32 block; after the whole K loop the four
// tiles pass through a 4 KiB thread-local scratch (L1) into the same vector epilogue as VNNI. The
// caller runs the epilogue of one block after issuing the tile work of the next (two scratch buffers),
// so the vector epilogue overlaps the long-latency TDPBUSD chain out of order.
#define PYQ_TARGET_AMX \
  __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

bool request_amx_permission() {
#if defined(__linux__)
  // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: the kernel only lets a process use the AMX tile
  // state after this request (torch/oneDNN make the same call).
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

}  // namespace

bool cpu_has_amx() {
  static const bool ok = [] {
    if (!cpu_has_vnni()) return false;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool tile = (edx >> 24) & 1u, int8 = (edx >> 25) & 1u;
    return tile && int8 && request_amx_permission();
  }();
  return ok;
}

// Eight 16 x 64-byte tiles. A constant in memory: GCC 12's _tile_loadconfig tells the compiler it reads
// only the first 8 bytes of its operand, so stores into a local config could be dropped as dead.
const TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

PYQ_TARGET_AMX void amx_begin() { _tile_loadconfig(&kTileConfig); }

PYQ_TARGET_AMX void amx_end() { _tile_release(); }

PYQ_TARGET_AMX void amx_compute(const uint8_t* a, int64_t lda, const int8_t* b_panel, int64_t ksteps, int col0,
                                int32_t* c) {
  // tmm0..3: C (rows 0-15 / 16-31 x cols 0-15 / 16-31); tmm4, 5: A; tmm6, 7: B.
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int8_t* b = b_panel + col0 * 4;
  for (int64_t s = 0; s < ksteps; ++s) {
    _tile_loadd(4, a + s * 64, lda);
    _tile_loadd(5, a + 16 * lda + s * 64, lda);
    _tile_loadd(6, b + s * 16 * kNr * 4, kNr * 4);
    _tile_loadd(7, b + s * 16 * kNr * 4 + 64, kNr * 4);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  _tile_stored(2, c + 16 * 32, 128);
  _tile_stored(3, c + 16 * 32 + 16, 128);
}

PYQ_TARGET_AMX void amx_epilogue(const int32_t* c, int rows, int col0, int cols, const Epilogue& e) {
  const __mmask16 m0 = lane_mask(cols), m1 = lane_mask(cols - 16);
  for (int r = 0; r < rows; ++r) {
    if (m0) store16(e, r, col0, _mm512_load_si512(c + r * 32), m0);
    if (m1) store16(e, r, col0 + 16, _mm512_load_si512(c + r * 32 + 16), m1);
  }
}

#else  // not x86: only the scalar path exists

bool cpu_has_vnni() { return false; }
bool cpu_has_avx2() { return false; }
void widen_row_avx2(const uint8_t*, int64_t, int64_t, int16_t*) {}
void widen_panel_avx2(const int8_t*, int64_t, int, int16_t*) {}
void rows_panel_avx2(const int16_t*, const int16_t*, int64_t, int, int, const Epilogue&) {}
void strips_panel_vnni_narrow(const uint8_t*, int64_t, int, const int8_t*, int64_t, int, int, const Epilogue&) {}
void strip_panel_vnni(const uint8_t* a, const int8_t* b, int64_t k4, int rows, int cols, const Epilogue& e) {
  strip_panel_scalar(a, b, k4, rows, cols, e);
}
void depthwise_row_avx512(const DepthwiseArgs& a, int64_t oh, const Epilogue& e) { depthwise_row_scalar(a, oh, e); }
void depthwise_row_avx2(const DepthwiseArgs& a, int64_t oh, const Epilogue& e) { depthwise_row_scalar(a, oh, e); }
void depthwise_row_vnni(const DepthwiseArgs&, const DepthwiseVnniPlan&, int64_t, const Epilogue&) {}
void depthwise_row_vnni_rows(const DepthwiseArgs&, const DepthwiseVnniRowsPlan&, int64_t, const Epilogue&, uint8_t*) {}
void depthwise_vnni_rows_prepare(const int8_t*, int64_t, int64_t, const int32_t*, const float*, const float*, int8_t*,
                                 int32_t*, float*, float*) {}
void depthwise_vnni_prepare(const int8_t* w_payload, int64_t C, int64_t C_pad, int64_t taps,
                            const int32_t* zero_point_term, const float* multiplier, const float* bias,
                            int8_t* w_out, int32_t* acc_init_out, float* multiplier_out, float* bias_out) {
  const int64_t blocks = depthwise_vnni_blocks(C);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t t = 0; t < taps; ++t)
      for (int j = 0; j < 4; ++j)
        for (int i = 0; i < 64; ++i)
          w_out[((b * taps + t) * 4 + j) * 64 + i] = i % 4 == j ? w_payload[t * C_pad + b * 64 + i] : int8_t{0};
  depthwise_vnni_prepare_params(C, zero_point_term, multiplier, bias, acc_init_out, multiplier_out, bias_out);
}
bool cpu_has_amx() { return false; }
void copy_bytes_avx512(uint8_t* dst, const uint8_t* src, int64_t n) { std::memcpy(dst, src, n); }
void amx_begin() {}
void amx_end() {}
void amx_compute(const uint8_t*, int64_t, const int8_t*, int64_t, int, int32_t*) {}
void amx_epilogue(const int32_t*, int, int, int, const Epilogue&) {}

#endif

}  // namespace pyquant::cpu::int8
