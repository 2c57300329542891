#pragma once
// QDrop (Wei et al., ICLR 2022) inside the LSQ fake-quant kernels: element i of x passes through in
// FP32 (forward y = x; backward dx = grad and no contribution to d scale / d zero-point) when
// u(seed, i) < drop_p, and is LSQ fake-quantized otherwise. Shared verbatim by the CPU kernels (the
// portable variant and every scalar fallback), the vectorized CPU kernels (which follow it operation
// by operation) and the CUDA kernels; pyquant/reference/fake_quant.py recomputes it with torch integer
// ops, bit for bit.
//
// u is counter-based: a pure function of (seed, i), where i is the element's flat index in row-major
// (logical) order. Nothing is stored between forward and backward -- the backward recomputes the
// mask from the seed -- and the mask cannot depend on the thread count, the vector width, the device
// or the memory layout.
//
// The hash. The 64-bit index is split into lo = i mod 2^32 and hi = i / 2^32; (seed, hi) give two
// 32-bit keys (a, b), and the element's 32 random bits are
//     bits = mix(mix(lo ^ a) ^ b)
// with mix = MurmurHash3's 32-bit finalizer (an invertible xor-shift/multiply avalanche). For fixed
// keys this is a bijection of lo, so over each run of 2^32 indices every bit pattern occurs exactly
// once; two rounds with a key between them decorrelate neighbouring indices and different seeds
// (tests/test_fake_quant_qdrop.py measures both). Only 32-bit multiply, xor and logical shift: the
// AVX2 / AVX-512 integer units evaluate 8 / 16 lanes at once, and so do the CUDA cores.
//
// The decision. u = (bits >> 8) * 2^-24 is uniform on the 2^24 multiples of 2^-24 in [0, 1), and
// u < drop_p  <=>  (bits >> 8) < ceil(drop_p * 2^24) = threshold, an integer comparison (drop_p * 2^24
// is exact in double). drop_p = 0 gives threshold 0 (never FP32), drop_p = 1 gives 2^24 (always).

#include <cstdint>

#include "pyquant/macros.h"
#include "pyquant/quant_math.h"

namespace pyquant {

// The per-call constants, made on the host from (drop_p, seed) and passed by value to the kernels.
struct QdropParams {
  uint32_t seed_lo;
  uint32_t seed_hi;
  uint32_t threshold;  // in [0, 2^24]
};

// The keys of one run of 2^32 indices (one value of hi).
struct QdropKey {
  uint32_t a;
  uint32_t b;
  uint32_t threshold;
};

constexpr uint32_t kQdropMul1 = 0x85ebca6bu;
constexpr uint32_t kQdropMul2 = 0xc2b2ae35u;
// Added to hi before hashing so that hi = 0 (every tensor below 2^32 elements) does not feed a zero
// into the key schedule; the golden-ratio constant 2^32 / phi.
constexpr uint32_t kQdropHiSalt = 0x9e3779b9u;
constexpr int kQdropBitsShift = 8;  // keep the top 24 of the 32 bits: exact in float32, as u is defined

PYQ_HOST_DEVICE uint32_t qdrop_mix(uint32_t x) {
  x ^= x >> 16;
  x *= kQdropMul1;
  x ^= x >> 13;
  x *= kQdropMul2;
  x ^= x >> 16;
  return x;
}

// ceil(drop_p * 2^24) for drop_p in [0, 1] (the host validates the range).
PYQ_HOST_DEVICE uint32_t qdrop_threshold(double drop_p) {
  const double t = drop_p * 16777216.0;  // exact: scaling by a power of two
  const uint32_t floor_t = static_cast<uint32_t>(t);
  return static_cast<double>(floor_t) == t ? floor_t : floor_t + 1u;
}

PYQ_HOST_DEVICE QdropParams make_qdrop_params(double drop_p, uint64_t seed) {
  QdropParams p;
  p.seed_lo = static_cast<uint32_t>(seed);
  p.seed_hi = static_cast<uint32_t>(seed >> 32);
  p.threshold = qdrop_threshold(drop_p);
  return p;
}

PYQ_HOST_DEVICE QdropKey qdrop_key(const QdropParams& p, uint32_t index_hi) {
  QdropKey k;
  k.a = qdrop_mix(p.seed_lo ^ qdrop_mix(p.seed_hi ^ qdrop_mix(index_hi + kQdropHiSalt)));
  k.b = qdrop_mix(k.a + kQdropHiSalt);
  k.threshold = p.threshold;
  return k;
}

PYQ_HOST_DEVICE uint32_t qdrop_bits(const QdropKey& k, uint32_t index_lo) {
  return qdrop_mix(qdrop_mix(index_lo ^ k.a) ^ k.b);
}

// True when the element at index (hi, lo) passes through in FP32.
PYQ_HOST_DEVICE bool qdrop_keeps_fp(const QdropKey& k, uint32_t index_lo) {
  return (qdrop_bits(k, index_lo) >> kQdropBitsShift) < k.threshold;
}

PYQ_HOST_DEVICE bool qdrop_keeps_fp_at(const QdropParams& p, int64_t index) {
  const uint64_t i = static_cast<uint64_t>(index);
  return qdrop_keeps_fp(qdrop_key(p, static_cast<uint32_t>(i >> 32)), static_cast<uint32_t>(i));
}

// qdrop_keeps_fp_at over a walk through increasing indices: the key is remade only when hi changes
// (once per 2^32 elements), so each element costs the two rounds of qdrop_bits.
struct QdropCursor {
  QdropParams params;
  QdropKey key;
  uint32_t hi;
  bool valid;

  PYQ_HOST_DEVICE explicit QdropCursor(const QdropParams& p) : params(p), key(), hi(0), valid(false) {}

  PYQ_HOST_DEVICE const QdropKey& key_for(int64_t index) {
    const uint32_t h = static_cast<uint32_t>(static_cast<uint64_t>(index) >> 32);
    if (!valid || h != hi) {
      key = qdrop_key(params, h);
      hi = h;
      valid = true;
    }
    return key;
  }

  PYQ_HOST_DEVICE bool keeps_fp(int64_t index) {
    return qdrop_keeps_fp(key_for(index), static_cast<uint32_t>(index));
  }
};

// Forward of one element: x itself when kept in FP32, else LSQ's fake-quant value (integer-mode
// zero-point: LSQ's zero-point is rounded before it reaches the kernels).
PYQ_HOST_DEVICE float lsq_qdrop_value(float x, const AffineParams& p, bool keep_fp) {
  bool in_range = false;
  return keep_fp ? x : fake_quant_value<ZeroPointMode::kInteger>(x, p, &in_range);
}

// Backward of one element, already multiplied by the upstream gradient g. A kept element passes g to
// x and contributes nothing to the parameter sums -- not g * 0, which is NaN for a non-finite g --
// so callers skip it when `contributes` is false.
struct LsqQdropGrad {
  float dx;
  float dscale;
  float dzero_point;
  bool contributes;
};

PYQ_HOST_DEVICE LsqQdropGrad lsq_qdrop_grad(float x, float g, const AffineParams& p, bool keep_fp) {
  LsqQdropGrad r;
  if (keep_fp) {
    r.dx = g;
    r.dscale = 0.0f;
    r.dzero_point = 0.0f;
    r.contributes = false;
    return r;
  }
  const LsqTerms t = lsq_terms(x, p);
  r.dx = t.in_range ? g : 0.0f;
  r.dscale = g * t.dscale;
  r.dzero_point = g * t.dzero_point;
  r.contributes = true;
  return r;
}

}  // namespace pyquant
