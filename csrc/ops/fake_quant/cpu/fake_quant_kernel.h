#pragma once
// Raw-pointer kernels of the fake-quant family, one table per CPU variant (see csrc/cpu/isa.h).
// They see a tensor as its memory, viewed as [outer, channels, inner]: the element at memory
// position i belongs to channel (i / inner) % channels. Every range [begin, end) handed to them starts
// on a multiple of 64 elements, so each 64-bit word of the bit-packed mask has a single writer.
#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"
#include "pyquant/qdrop_math.h"
#include "pyquant/quant_math.h"

namespace pyquant::cpu {

// Per-channel quantizer constants as arrays (structure of arrays, so kernels can load a vector of
// consecutive channels when inner == 1, e.g. channels_last activations).
struct ChannelTable {
  const float* scale;
  const float* inv_scale;
  const float* zero_point;
  float qmin;
  float qmax;
  int64_t channels;
  int64_t inner;
  // Write outputs with non-temporal stores: for outputs much larger than the last-level cache, this
  // saves the read-for-ownership of every destination line (a third of the memory traffic).
  bool stream_stores;
};

struct FakeQuantKernels {
  // y = fake_quant(x); when mask != nullptr, bit i of mask = level in range.
  void (*forward)(c10::ScalarType dtype, ZeroPointMode mode, const void* x, void* y, uint64_t* mask,
                  int64_t begin, int64_t end, const ChannelTable& table);
  // dx = grad where the mask bit is set, else 0.
  void (*mask_backward)(c10::ScalarType dtype, const void* grad, const uint64_t* mask, void* dx, int64_t begin,
                        int64_t end, bool stream_stores);
  // LSQ: dx, and per-channel sums of grad * lsq_terms (added into dscale[c], dzero_point[c]).
  void (*lsq_backward)(c10::ScalarType dtype, const void* x, const void* grad, void* dx, int64_t begin,
                       int64_t end, const ChannelTable& table, double* dscale, double* dzero_point);
  // LSQ with QDrop (pyquant/qdrop_math.h): positions are the mask's flat indices, so x, y, grad and dx
  // are contiguous. Forward: y = x where the mask keeps FP32, else LSQ's fake_quant (integer-mode
  // zero-point). Backward: as lsq_backward, with dx = grad and no parameter terms where kept.
  void (*lsq_qdrop_forward)(c10::ScalarType dtype, const void* x, void* y, int64_t begin, int64_t end,
                            const ChannelTable& table, const QdropParams& qdrop);
  void (*lsq_qdrop_backward)(c10::ScalarType dtype, const void* x, const void* grad, void* dx, int64_t begin,
                             int64_t end, const ChannelTable& table, const QdropParams& qdrop, double* dscale,
                             double* dzero_point);
  // PACT: dx, and per-channel sums of grad where x >= alpha (added into dalpha[c]).
  // table.scale holds alpha per channel.
  void (*pact_backward)(c10::ScalarType dtype, const void* x, const void* grad, void* dx, int64_t begin,
                        int64_t end, const ChannelTable& table, double* dalpha);
};

}  // namespace pyquant::cpu

PYQ_DECLARE_ISA_TABLE(::pyquant::cpu::FakeQuantKernels, fake_quant_kernels)
