// CPU kernels of the fake-quant family, compiled once per CPU variant (setup.py and CMakeLists.txt
// define CPU_CAPABILITY and its -m flags). The AVX2 / AVX-512 variants are vectorized with
// at::vec::Vectorized<float> and follow pyquant/quant_math.h operation by operation; the portable
// variant calls those header functions directly, per element, exactly as the CUDA kernels do. The
// tests hold every variant to torch.fake_quantize_* bit for bit.
#include "fake_quant_kernel.h"

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#if !defined(CPU_CAPABILITY)
#error "compile this file with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512"
#endif
#if !defined(CPU_CAPABILITY_DEFAULT) && !defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512)
#error "unknown CPU_CAPABILITY variant"
#endif

namespace pyquant::cpu::CPU_CAPABILITY {
namespace {

#if defined(CPU_CAPABILITY_DEFAULT)

// The portable variant runs the per-element functions of pyquant/quant_math.h -- the very code the
// CUDA kernels run -- so the CPU tests of this variant (ATEN_CPU_CAPABILITY=default) check the GPU
// arithmetic bit for bit.

inline AffineParams params_at(const ChannelTable& t, int64_t pos) {
  const int64_t c = t.channels == 1 ? 0 : (pos / t.inner) % t.channels;
  return make_affine_params(t.scale[c], t.zero_point[c], t.qmin, t.qmax);
}

inline int64_t channel_at(const ChannelTable& t, int64_t pos) {
  return t.channels == 1 ? 0 : (pos / t.inner) % t.channels;
}

// kQdrop: LSQ with QDrop (integer mode, no mask); `qdrop` is read only then.
template <typename scalar_t, ZeroPointMode kMode, bool kWithMask, bool kQdrop = false>
void forward_typed(const scalar_t* x, scalar_t* y, uint64_t* mask, int64_t begin, int64_t end,
                   const ChannelTable& t, const QdropParams* qdrop = nullptr) {
  static_assert(!kQdrop || (kMode == ZeroPointMode::kInteger && !kWithMask), "QDrop runs LSQ's forward only");
  uint64_t word = 0;
  QdropCursor cursor(kQdrop ? *qdrop : QdropParams{});
  for (int64_t i = begin; i < end; ++i) {
    bool in_range = false;
    if constexpr (kQdrop) {
      y[i] = static_cast<scalar_t>(lsq_qdrop_value(static_cast<float>(x[i]), params_at(t, i), cursor.keeps_fp(i)));
    } else {
      y[i] = static_cast<scalar_t>(fake_quant_value<kMode>(static_cast<float>(x[i]), params_at(t, i), &in_range));
    }
    if constexpr (kWithMask) {
      word |= static_cast<uint64_t>(in_range) << (i & 63);
      if ((i & 63) == 63 || i + 1 == end) {
        mask[i >> 6] = word;  // ranges start on a word boundary: this thread owns the word
        word = 0;
      }
    }
  }
}

template <typename scalar_t>
void mask_backward_typed(const scalar_t* grad, const uint64_t* mask, scalar_t* dx, int64_t begin, int64_t end,
                         bool /*stream_stores*/) {
  for (int64_t i = begin; i < end; ++i) {
    dx[i] = ((mask[i >> 6] >> (i & 63)) & 1u) ? grad[i] : static_cast<scalar_t>(0.0f);
  }
}

template <typename scalar_t, bool kQdrop = false>
void lsq_backward_typed(const scalar_t* x, const scalar_t* grad, scalar_t* dx, int64_t begin, int64_t end,
                        const ChannelTable& t, double* dscale, double* dzero_point,
                        const QdropParams* qdrop = nullptr) {
  QdropCursor cursor(kQdrop ? *qdrop : QdropParams{});
  for (int64_t i = begin; i < end; ++i) {
    const float g = static_cast<float>(grad[i]);
    const int64_t c = channel_at(t, i);
    if constexpr (kQdrop) {
      const LsqQdropGrad r = lsq_qdrop_grad(static_cast<float>(x[i]), g, params_at(t, i), cursor.keeps_fp(i));
      dx[i] = static_cast<scalar_t>(r.dx);
      if (r.contributes) {
        dscale[c] += r.dscale;
        dzero_point[c] += r.dzero_point;
      }
    } else {
      const LsqTerms terms = lsq_terms(static_cast<float>(x[i]), params_at(t, i));
      dx[i] = static_cast<scalar_t>(terms.in_range ? g : 0.0f);
      dscale[c] += g * terms.dscale;
      dzero_point[c] += g * terms.dzero_point;
    }
  }
}

template <typename scalar_t>
void pact_backward_typed(const scalar_t* x, const scalar_t* grad, scalar_t* dx, int64_t begin, int64_t end,
                         const ChannelTable& t, double* dalpha) {
  for (int64_t i = begin; i < end; ++i) {
    const float xv = static_cast<float>(x[i]);
    const float g = static_cast<float>(grad[i]);
    const int64_t c = channel_at(t, i);
    const float alpha = t.scale[c];  // the table holds alpha for the PACT backward
    dx[i] = static_cast<scalar_t>(pact_passes_x(xv, alpha) ? g : 0.0f);
    if (pact_clipped_high(xv, alpha)) dalpha[c] += g;
  }
}

#else  // AVX2 / AVX512: at::vec

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
static_assert(64 % kLanes == 0, "a vector must never straddle a 64-bit mask word");

inline uint32_t low_bits(int64_t n) {
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

// Lanes of a comparison result (all-ones / all-zeros lanes) as an integer bit mask.
inline uint32_t lane_bits(const Vec& m) {
#if defined(CPU_CAPABILITY_AVX512)
  return static_cast<uint32_t>(_mm512_movepi32_mask(_mm512_castps_si512(m)));
#else
  return static_cast<uint32_t>(_mm256_movemask_ps(m));
#endif
}

// v in the lanes whose bit is set, +0.0 elsewhere.
inline Vec keep_lanes(uint32_t bits, const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(bits), v);
#else
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i hit = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane), lane);
  return _mm256_and_ps(_mm256_castsi256_ps(hit), v);
#endif
}

// Stores n lanes; full, aligned vectors go around the cache when `stream` (see ChannelTable).
inline void store_lanes(float* dst, const Vec& v, int64_t n, bool stream) {
  if (n == kLanes) {
    if (stream && (reinterpret_cast<uintptr_t>(dst) % sizeof(Vec)) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
      _mm512_stream_ps(dst, v);
#else
      _mm256_stream_ps(dst, v);
#endif
      return;
    }
    v.store(dst);
  } else {
    v.store(dst, n);
  }
}

// Orders this thread's streaming stores before the kernel returns.
inline void finish_streaming(bool stream) {
  if (stream) _mm_sfence();
}

// min(hi, max(lo, q)) in this operand order lets NaN through: x86 MAXPS/MINPS return their second
// operand when either is NaN (quant_math.h: clamp_level). at::vec::clamp is exactly this pair.
inline Vec clamp_keep_nan(const Vec& q, const Vec& lo, const Vec& hi) {
  return at::vec::clamp(q, lo, hi);
}

// Bit i set where a[i] == b[i] (ordered: false for NaN), straight from the compare instruction.
inline uint32_t equal_bits(const Vec& a, const Vec& b) {
#if defined(CPU_CAPABILITY_AVX512)
  return static_cast<uint32_t>(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ));
#else
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)));
#endif
}

// QDrop's hash (pyquant/qdrop_math.h) on kLanes consecutive indices at once: 32-bit multiply, xor and
// logical shift on the integer side of the vector unit.
#if defined(CPU_CAPABILITY_AVX512)
using IVec = __m512i;
inline IVec iv_set1(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
inline IVec iv_iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
inline IVec iv_add(IVec a, IVec b) { return _mm512_add_epi32(a, b); }
inline IVec iv_xor(IVec a, IVec b) { return _mm512_xor_si512(a, b); }
inline IVec iv_mul(IVec a, IVec b) { return _mm512_mullo_epi32(a, b); }
template <int kShift>
inline IVec iv_srl(IVec a) { return _mm512_srli_epi32(a, kShift); }
// All-ones float lanes where a < b (signed; both operands here are below 2^31).
inline Vec iv_less(IVec a, IVec b) { return _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmplt_epi32_mask(a, b))); }
#else
using IVec = __m256i;
inline IVec iv_set1(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
inline IVec iv_iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
inline IVec iv_add(IVec a, IVec b) { return _mm256_add_epi32(a, b); }
inline IVec iv_xor(IVec a, IVec b) { return _mm256_xor_si256(a, b); }
inline IVec iv_mul(IVec a, IVec b) { return _mm256_mullo_epi32(a, b); }
template <int kShift>
inline IVec iv_srl(IVec a) { return _mm256_srli_epi32(a, kShift); }
inline Vec iv_less(IVec a, IVec b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, a)); }
#endif
static_assert(sizeof(IVec) / sizeof(int32_t) == kLanes, "one integer lane per float lane");

// qdrop_mix, lane by lane.
inline IVec iv_mix(IVec x) {
  x = iv_xor(x, iv_srl<16>(x));
  x = iv_mul(x, iv_set1(kQdropMul1));
  x = iv_xor(x, iv_srl<13>(x));
  x = iv_mul(x, iv_set1(kQdropMul2));
  return iv_xor(x, iv_srl<16>(x));
}

// The FP32 lanes of QDrop: all-ones float lanes where the element at that absolute position passes
// through (qdrop_keeps_fp), for vectors at increasing positions.
class QdropLanes {
 public:
  explicit QdropLanes(const QdropParams& p) : cursor_(p), iota_(iv_iota()) {}

  // Lanes [0, n) of positions [pos, pos + n); lanes past n are unspecified.
  Vec at(int64_t pos, int64_t n) {
    const uint64_t first = static_cast<uint64_t>(pos);
    const uint64_t last = first + static_cast<uint64_t>(n) - 1;
    if ((first >> 32) != (last >> 32)) return straddling(pos, n);
    const QdropKey& k = cursor_.key_for(pos);
    const IVec index = iv_add(iv_set1(static_cast<uint32_t>(first)), iota_);
    const IVec bits = iv_mix(iv_xor(iv_mix(iv_xor(index, iv_set1(k.a))), iv_set1(k.b)));
    return iv_less(iv_srl<kQdropBitsShift>(bits), iv_set1(k.threshold));
  }

 private:
  // A vector across a multiple of 2^32 (the low index would wrap inside it): lane by lane.
  Vec straddling(int64_t pos, int64_t n) {
    uint32_t bits = 0;
    for (int64_t k = 0; k < n; ++k) bits |= static_cast<uint32_t>(cursor_.keeps_fp(pos + k)) << k;
    const Vec all_ones = Vec(0.0f) == Vec(0.0f);
    return keep_lanes(bits, all_ones);
  }

  QdropCursor cursor_;
  IVec iota_;
};

// Packs mask bits into 64-bit words in increasing position order. Ranges start on a word boundary,
// so a word is complete once the writer moves past it.
class MaskWriter {
 public:
  explicit MaskWriter(uint64_t* words) : words_(words) {}
  ~MaskWriter() { flush(); }

  void put(int64_t pos, uint32_t bits, int64_t n) {
    const int64_t word = pos >> 6;
    const int offset = static_cast<int>(pos & 63);
    if (word != current_) {
      flush();
      current_ = word;
      acc_ = 0;
    }
    acc_ |= static_cast<uint64_t>(bits) << offset;
    if (offset + n > 64) {  // only when a segment boundary left the vector unaligned
      flush();
      current_ = word + 1;
      acc_ = static_cast<uint64_t>(bits) >> (64 - offset);
    }
  }

 private:
  void flush() {
    if (current_ >= 0) words_[current_] = acc_;
  }
  uint64_t* words_;
  int64_t current_ = -1;
  uint64_t acc_ = 0;
};

// The quantizer constants of one vector: broadcast from one channel, or loaded for consecutive
// channels (inner == 1).
struct VecParams {
  Vec scale, inv_scale, zero_point, qmin, qmax;
};

inline VecParams broadcast_params(const ChannelTable& t, int64_t c) {
  return {Vec(t.scale[c]), Vec(t.inv_scale[c]), Vec(t.zero_point[c]), Vec(t.qmin), Vec(t.qmax)};
}

inline VecParams channel_params(const ChannelTable& t, int64_t c, int64_t n) {
  return {Vec::loadu(t.scale + c, n), Vec::loadu(t.inv_scale + c, n), Vec::loadu(t.zero_point + c, n),
          Vec(t.qmin), Vec(t.qmax)};
}

// quant_math.h dequant_level<kFloat>: evaluated in double per lane (ATen's float zero-point rule).
inline Vec dequant_float_zero_point(const Vec& q, const VecParams& p) {
  float lq[kLanes], lz[kLanes], ls[kLanes], out[kLanes];
  q.store(lq);
  p.zero_point.store(lz);
  p.scale.store(ls);
  for (int64_t i = 0; i < kLanes; ++i) {
    out[i] = static_cast<float>((static_cast<double>(lq[i]) - static_cast<double>(lz[i])) * static_cast<double>(ls[i]));
  }
  return Vec::loadu(out);
}

// Calls body(pos, n, params) over [pos0, pos0 + n_total) in vectors of at most kLanes elements that
// never cross a channel boundary. body returns nothing; positions are absolute memory positions.
template <typename Body>
inline void for_each_vector(const ChannelTable& t, int64_t pos0, int64_t n_total, Body&& body) {
  int64_t i = 0;
  while (i < n_total) {
    const int64_t pos = pos0 + i;
    if (t.inner > 1 || t.channels == 1) {
      const int64_t run = pos / t.inner;
      const int64_t len = std::min(n_total - i, (run + 1) * t.inner - pos);
      const VecParams p = broadcast_params(t, run % t.channels);
      for (int64_t j = 0; j < len; j += kLanes) {
        body(i + j, std::min(kLanes, len - j), p);
      }
      i += len;
    } else {
      const int64_t c0 = pos % t.channels;
      const int64_t len = std::min(n_total - i, t.channels - c0);
      for (int64_t j = 0; j < len; j += kLanes) {
        const int64_t n = std::min(kLanes, len - j);
        body(i + j, n, channel_params(t, c0 + j, n));
      }
      i += len;
    }
  }
}

// Runs body(xs..., out, pos, n) on float views of [begin, end): float tensors directly, reduced
// floating types through small float buffers (computation is always in float32).
constexpr int64_t kStage = 512;

template <typename scalar_t, typename Body>
inline void staged_unary(const scalar_t* in, scalar_t* out, int64_t begin, int64_t end, Body&& body) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    body(in + begin, out + begin, begin, end - begin);
  } else {
    float fin[kStage];
    float fout[kStage];
    for (int64_t s = begin; s < end; s += kStage) {
      const int64_t n = std::min(kStage, end - s);
      at::vec::convert(in + s, fin, n);
      body(fin, fout, s, n);
      at::vec::convert(fout, out + s, n);
    }
  }
}

template <typename scalar_t, typename Body>
inline void staged_binary(const scalar_t* a, const scalar_t* b, scalar_t* out, int64_t begin, int64_t end,
                          Body&& body) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    body(a + begin, b + begin, out + begin, begin, end - begin);
  } else {
    float fa[kStage];
    float fb[kStage];
    float fout[kStage];
    for (int64_t s = begin; s < end; s += kStage) {
      const int64_t n = std::min(kStage, end - s);
      at::vec::convert(a + s, fa, n);
      at::vec::convert(b + s, fb, n);
      body(fa, fb, fout, s, n);
      at::vec::convert(fout, out + s, n);
    }
  }
}

// kQdrop: LSQ with QDrop (integer mode, no mask); `qdrop` is read only then.
template <typename scalar_t, ZeroPointMode kMode, bool kWithMask, bool kQdrop = false>
void forward_typed(const scalar_t* x, scalar_t* y, uint64_t* mask, int64_t begin, int64_t end,
                   const ChannelTable& t, const QdropParams* qdrop = nullptr) {
  static_assert(!kQdrop || (kMode == ZeroPointMode::kInteger && !kWithMask), "QDrop runs LSQ's forward only");
  // Streaming applies to float outputs; reduced types go through a staging buffer.
  const bool stream = t.stream_stores && std::is_same_v<scalar_t, float>;
  MaskWriter writer(mask);
  QdropLanes fp_lanes(kQdrop ? *qdrop : QdropParams{});
  staged_unary(x, y, begin, end, [&](const float* xf, float* yf, int64_t pos0, int64_t n_total) {
    for_each_vector(t, pos0, n_total, [&](int64_t i, int64_t n, const VecParams& p) {
      const Vec xv = n == kLanes ? Vec::loadu(xf + i) : Vec::loadu(xf + i, n);
      Vec q;
      if constexpr (kMode == ZeroPointMode::kInteger) {
        q = (xv * p.inv_scale).round() + p.zero_point;
      } else {
        // Fused multiply-add, as ATen's AVX2/AVX-512 builds compile `zero_point + x * inv_scale`
        // (-mfma with GCC's default contraction): one rounding, not two.
        q = at::vec::fmadd(xv, p.inv_scale, p.zero_point).round();
      }
      const Vec qc = clamp_keep_nan(q, p.qmin, p.qmax);
      Vec yv;
      if constexpr (kMode == ZeroPointMode::kInteger) {
        yv = (qc - p.zero_point) * p.scale;
      } else {
        yv = dequant_float_zero_point(qc, p);
      }
      if constexpr (kQdrop) yv = Vec::blendv(yv, xv, fp_lanes.at(pos0 + i, n));
      store_lanes(yf + i, yv, n, stream);
      if constexpr (kWithMask) {
        // In range <=> clamping left the level unchanged (NaN compares unequal: out of range).
        writer.put(pos0 + i, equal_bits(qc, q) & low_bits(n), n);
      }
    });
  });
  finish_streaming(stream);
}

template <typename scalar_t>
void mask_backward_typed(const scalar_t* grad, const uint64_t* mask, scalar_t* dx, int64_t begin, int64_t end,
                         bool stream_stores) {
  const bool stream = stream_stores && std::is_same_v<scalar_t, float>;
  staged_unary(grad, dx, begin, end, [&](const float* g, float* out, int64_t pos0, int64_t n_total) {
    for (int64_t i = 0; i < n_total; i += kLanes) {
      const int64_t pos = pos0 + i;
      const int64_t n = std::min(kLanes, n_total - i);
      const uint32_t bits = static_cast<uint32_t>(mask[pos >> 6] >> (pos & 63)) & low_bits(n);
      // pos0 is a multiple of 64 for float and of kStage (a multiple of 64) inside staged ranges.
      const Vec gv = n == kLanes ? Vec::loadu(g + i) : Vec::loadu(g + i, n);
      store_lanes(out + i, keep_lanes(bits, gv), n, stream);
    }
  });
  finish_streaming(stream);
}

// Horizontal sum of the first n lanes, in double.
inline double sum_lanes(const Vec& v) {
  float lanes[kLanes];
  v.store(lanes);
  double s = 0.0;
  for (int64_t i = 0; i < kLanes; ++i) s += lanes[i];
  return s;
}

// Adds per-lane values of vectors covering channels [c, c + n) (inner == 1) or one channel (inner > 1)
// into the per-channel double accumulators. Called once per vector; the float partials of a
// broadcast run are summed in vector registers first (see reduce_backward_typed).
template <typename scalar_t, typename Terms>
void reduce_backward_typed(const scalar_t* x, const scalar_t* grad, scalar_t* dx, int64_t begin, int64_t end,
                           const ChannelTable& t, double* acc0, double* acc1, Terms&& terms) {
  const bool stream = t.stream_stores && std::is_same_v<scalar_t, float>;
  staged_binary(x, grad, dx, begin, end,
                [&](const float* xf, const float* gf, float* out, int64_t pos0, int64_t n_total) {
    // Run accumulators: one channel at a time for broadcast runs.
    Vec run0(0.0f), run1(0.0f);
    int64_t run_channel = -1;
    auto flush_run = [&]() {
      if (run_channel >= 0) {
        acc0[run_channel] += sum_lanes(run0);
        if (acc1 != nullptr) acc1[run_channel] += sum_lanes(run1);
      }
      run0 = Vec(0.0f);
      run1 = Vec(0.0f);
    };
    for_each_vector(t, pos0, n_total, [&](int64_t i, int64_t n, const VecParams& p) {
      const Vec xv = Vec::loadu(xf + i, n);
      const Vec gv = Vec::loadu(gf + i, n);
      Vec dxv, g0, g1;
      terms(xv, gv, p, pos0 + i, n, dxv, g0, g1);
      // Lanes past n hold x = 0, grad = 0, so their terms are 0 * finite = 0 unless params are 0/NaN:
      // mask them explicitly.
      const uint32_t live = low_bits(n);
      g0 = keep_lanes(live, g0);
      g1 = keep_lanes(live, g1);
      store_lanes(out + i, dxv, n, stream);
      const int64_t pos = pos0 + i;
      if (t.inner > 1 || t.channels == 1) {
        const int64_t c = (pos / t.inner) % t.channels;
        if (c != run_channel) {
          flush_run();
          run_channel = c;
        }
        run0 = run0 + g0;
        run1 = run1 + g1;
      } else {
        const int64_t c0 = pos % t.channels;
        float l0[kLanes], l1[kLanes];
        g0.store(l0);
        g1.store(l1);
        for (int64_t k = 0; k < n; ++k) {
          acc0[c0 + k] += l0[k];
          if (acc1 != nullptr) acc1[c0 + k] += l1[k];
        }
      }
    });
    flush_run();
  });
  finish_streaming(stream);
}

template <typename scalar_t, bool kQdrop = false>
void lsq_backward_typed(const scalar_t* x, const scalar_t* grad, scalar_t* dx, int64_t begin, int64_t end,
                        const ChannelTable& t, double* dscale, double* dzero_point,
                        const QdropParams* qdrop = nullptr) {
  QdropLanes fp_lanes(kQdrop ? *qdrop : QdropParams{});
  reduce_backward_typed(x, grad, dx, begin, end, t, dscale, dzero_point,
                        [&fp_lanes](const Vec& xv, const Vec& gv, const VecParams& p, int64_t pos, int64_t n, Vec& dxv,
                                    Vec& ds, Vec& dz) {
    // quant_math.h: lsq_terms, vectorized.
    const Vec q = (xv * p.inv_scale).round() + p.zero_point;
    const Vec below = q < p.qmin;
    const Vec above = q > p.qmax;
    const Vec inside = (q >= p.qmin) & (q <= p.qmax);
    const Vec inside_term = ((q - p.zero_point) * p.scale - xv) * p.inv_scale;
    Vec s_term = Vec::blendv(Vec(0.0f), inside_term, inside);
    s_term = Vec::blendv(s_term, p.qmin - p.zero_point, below);
    s_term = Vec::blendv(s_term, p.qmax - p.zero_point, above);
    const Vec z_term = Vec::blendv(Vec(0.0f), Vec(0.0f) - p.scale, below | above);
    dxv = keep_lanes(lane_bits(inside), gv);
    ds = gv * s_term;
    dz = gv * z_term;
    if constexpr (kQdrop) {
      // qdrop_math.h lsq_qdrop_grad: kept lanes pass grad and add exactly 0 (a blend, not grad * 0).
      const Vec fp = fp_lanes.at(pos, n);
      dxv = Vec::blendv(dxv, gv, fp);
      ds = Vec::blendv(ds, Vec(0.0f), fp);
      dz = Vec::blendv(dz, Vec(0.0f), fp);
    }
  });
}

template <typename scalar_t>
void pact_backward_typed(const scalar_t* x, const scalar_t* grad, scalar_t* dx, int64_t begin, int64_t end,
                         const ChannelTable& t, double* dalpha) {
  reduce_backward_typed(x, grad, dx, begin, end, t, dalpha, nullptr,
                        [](const Vec& xv, const Vec& gv, const VecParams& p, int64_t /*pos*/, int64_t /*n*/, Vec& dxv,
                           Vec& da, Vec& unused) {
    // quant_math.h: pact_passes_x / pact_clipped_high; p.scale holds alpha.
    const Vec alpha = p.scale;
    const Vec pass = (xv >= Vec(0.0f)) & (xv < alpha);
    dxv = keep_lanes(lane_bits(pass), gv);
    da = keep_lanes(lane_bits(xv >= alpha), gv);
    unused = Vec(0.0f);
  });
}

#endif  // CPU_CAPABILITY_DEFAULT

#define PYQ_DISPATCH_FLOAT_TYPES(dtype, ...)                                 \
  switch (dtype) {                                                           \
    case c10::ScalarType::Float: {                                           \
      using scalar_t = float;                                                \
      __VA_ARGS__();                                                         \
      break;                                                                 \
    }                                                                        \
    case c10::ScalarType::BFloat16: {                                        \
      using scalar_t = c10::BFloat16;                                        \
      __VA_ARGS__();                                                         \
      break;                                                                 \
    }                                                                        \
    case c10::ScalarType::Half: {                                            \
      using scalar_t = c10::Half;                                            \
      __VA_ARGS__();                                                         \
      break;                                                                 \
    }                                                                        \
    default:                                                                 \
      TORCH_CHECK(false, "pyquant: unsupported dtype ", dtype);              \
  }

void forward(c10::ScalarType dtype, ZeroPointMode mode, const void* x, void* y, uint64_t* mask, int64_t begin,
             int64_t end, const ChannelTable& t) {
  PYQ_DISPATCH_FLOAT_TYPES(dtype, [&] {
    const auto* xs = static_cast<const scalar_t*>(x);
    auto* ys = static_cast<scalar_t*>(y);
    const bool with_mask = mask != nullptr;
    if (mode == ZeroPointMode::kInteger) {
      with_mask ? forward_typed<scalar_t, ZeroPointMode::kInteger, true>(xs, ys, mask, begin, end, t)
                : forward_typed<scalar_t, ZeroPointMode::kInteger, false>(xs, ys, mask, begin, end, t);
    } else {
      with_mask ? forward_typed<scalar_t, ZeroPointMode::kFloat, true>(xs, ys, mask, begin, end, t)
                : forward_typed<scalar_t, ZeroPointMode::kFloat, false>(xs, ys, mask, begin, end, t);
    }
  });
}

void mask_backward(c10::ScalarType dtype, const void* grad, const uint64_t* mask, void* dx, int64_t begin,
                   int64_t end, bool stream_stores) {
  PYQ_DISPATCH_FLOAT_TYPES(dtype, [&] {
    mask_backward_typed(static_cast<const scalar_t*>(grad), mask, static_cast<scalar_t*>(dx), begin, end,
                        stream_stores);
  });
}

void lsq_backward(c10::ScalarType dtype, const void* x, const void* grad, void* dx, int64_t begin, int64_t end,
                  const ChannelTable& t, double* dscale, double* dzero_point) {
  PYQ_DISPATCH_FLOAT_TYPES(dtype, [&] {
    lsq_backward_typed(static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(grad),
                       static_cast<scalar_t*>(dx), begin, end, t, dscale, dzero_point);
  });
}

void lsq_qdrop_forward(c10::ScalarType dtype, const void* x, void* y, int64_t begin, int64_t end,
                       const ChannelTable& t, const QdropParams& qdrop) {
  PYQ_DISPATCH_FLOAT_TYPES(dtype, [&] {
    forward_typed<scalar_t, ZeroPointMode::kInteger, false, true>(static_cast<const scalar_t*>(x),
                                                                  static_cast<scalar_t*>(y), nullptr, begin, end, t,
                                                                  &qdrop);
  });
}

void lsq_qdrop_backward(c10::ScalarType dtype, const void* x, const void* grad, void* dx, int64_t begin, int64_t end,
                        const ChannelTable& t, const QdropParams& qdrop, double* dscale, double* dzero_point) {
  PYQ_DISPATCH_FLOAT_TYPES(dtype, [&] {
    lsq_backward_typed<scalar_t, true>(static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(grad),
                                       static_cast<scalar_t*>(dx), begin, end, t, dscale, dzero_point, &qdrop);
  });
}

void pact_backward(c10::ScalarType dtype, const void* x, const void* grad, void* dx, int64_t begin, int64_t end,
                   const ChannelTable& t, double* dalpha) {
  PYQ_DISPATCH_FLOAT_TYPES(dtype, [&] {
    pact_backward_typed(static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(grad),
                        static_cast<scalar_t*>(dx), begin, end, t, dalpha);
  });
}

const FakeQuantKernels kKernels{&forward,           &mask_backward,      &lsq_backward,
                                 &lsq_qdrop_forward, &lsq_qdrop_backward, &pact_backward};

}  // namespace

const FakeQuantKernels* fake_quant_kernels() {
  return &kKernels;
}

}  // namespace pyquant::cpu::CPU_CAPABILITY
