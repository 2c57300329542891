"""Reference fake quantization (forward, STE mask, LSQ and PACT gradients, QDrop inside LSQ) in plain PyTorch.

The forward mirrors csrc/include/pyquant/quant_math.h operation by operation in float32 (x * (1/s),
round half to even, zero-point before or after rounding, clamp, dequantize), so it is bit-exact with
the kernels and with ``torch.fake_quantize_*``. The gradient references accumulate in float64.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def _shape_for(param: Tensor, x: Tensor, axis: Optional[int]) -> Tensor:
    p = param.reshape(-1)
    shape = [1] * x.dim()
    if axis is not None and x.dim() > 0:
        shape[axis] = -1
    return p.reshape(shape) if x.dim() > 0 else p.reshape(())


def _reduce_to(t: Tensor, x: Tensor, axis: Optional[int], like: Tensor) -> Tensor:
    """Sums t over every dimension but axis, shaped like the parameter tensor `like`."""
    if axis is None:
        total = t.sum()
    else:
        dims = [d for d in range(x.dim()) if d != axis % x.dim()]
        total = t.sum(dim=dims) if dims else t
    return total.reshape(like.shape)


def _params(x, scale, zero_point, qmin, qmax, axis, lsq_rounding=False):
    s = _shape_for(scale.to(torch.float32), x, axis)
    inv = 1.0 / s
    z_float = zero_point.is_floating_point()
    z = _shape_for(zero_point.to(torch.float32), x, axis)
    if lsq_rounding and z_float:
        z = torch.round(z).clamp(qmin, qmax)
        z_float = False
    return s, inv, z, z_float


def _fused_multiply_add(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 a * b + c with one rounding: the product of two float32 values is exact in float64, so
    only the sum is rounded before the final rounding to float32 (the two roundings can disagree with a
    true FMA only when the float64 sum lands exactly on a float32 half-way point, which needs operands
    about 2^29 apart in magnitude; far outside any quantization grid)."""
    return (a.double() * b.double() + c.double()).to(torch.float32)


def float_zero_point_is_fused(device: torch.device) -> bool:
    """Whether ATen (and so pyquant) fuses ``x * inv_scale + zero_point`` for float zero-points on
    this device: CUDA (nvcc's default --fmad=true) and the AVX2/AVX-512 CPU builds (compiled with
    -mfma and GCC's default contraction) do; the portable CPU build does not."""
    if device.type == "cuda":
        return True
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def _levels(x32, inv, z, z_float):
    if z_float:
        if float_zero_point_is_fused(x32.device):
            return torch.round(_fused_multiply_add(x32, inv, z))
        return torch.round(x32 * inv + z)
    return torch.round(x32 * inv) + z


def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: Optional[int] = None,
               lsq_rounding: bool = False) -> Tensor:
    """y = (clamp(q, qmin, qmax) - z) * s with q as in quant_math.h; float32 math, result in x.dtype."""
    s, inv, z, z_float = _params(x, scale, zero_point, qmin, qmax, axis, lsq_rounding)
    q = _levels(x.to(torch.float32), inv, z, z_float)
    if z_float:  # ATen's float zero-point rule: dequantize in double, round once
        return ((q.clamp(qmin, qmax).double() - z.double()) * s.double()).to(torch.float32).to(x.dtype)
    return ((q.clamp(qmin, qmax) - z) * s).to(x.dtype)


def fake_quant_mask(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                    axis: Optional[int] = None) -> Tensor:
    """The straight-through mask: the unclamped level lies in [qmin, qmax] (False for NaN)."""
    s, inv, z, z_float = _params(x, scale, zero_point, qmin, qmax, axis)
    q = _levels(x.to(torch.float32), inv, z, z_float)
    return (q >= qmin) & (q <= qmax)


def lsq_backward(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                 axis: Optional[int] = None, grad_factor: float = 1.0):
    """LSQ gradients (Esser et al. 2020, eq. 3) as torch._fake_quantize_learnable_* define them:
    returns (dx, dscale, dzero_point); levels in float32 like the kernel, sums in float64."""
    s, inv, z, _ = _params(x, scale, zero_point, qmin, qmax, axis, lsq_rounding=True)
    q = _levels(x.to(torch.float32), inv, z, False)
    below, above = q < qmin, q > qmax
    inside = (q >= qmin) & (q <= qmax)
    x64, s64, z64, q64, g64 = (t.to(torch.float64) for t in (x, s, z, q, grad))
    inside_term = ((q64 - z64) * s64 - x64) / s64
    ds_term = torch.where(inside, inside_term, torch.zeros_like(inside_term))
    ds_term = torch.where(below, qmin - z64, ds_term)
    ds_term = torch.where(above, qmax - z64, ds_term)
    dz_term = torch.where(below | above, -s64.expand_as(x64), torch.zeros_like(x64))
    dx = torch.where(inside, grad, torch.zeros_like(grad))
    dscale = _reduce_to(g64 * ds_term, x, axis, scale) * grad_factor
    dzero = _reduce_to(g64 * dz_term, x, axis, zero_point) * grad_factor
    return dx, dscale, dzero


def pact(x: Tensor, alpha: Tensor, bits: int, axis: Optional[int] = None) -> Tensor:
    """PACT forward (Choi et al. 2018, eq. 1-2): fake_quant with scale = alpha / (2^bits - 1) on [0, n]."""
    levels = 2**bits - 1
    scale = alpha.to(torch.float32) / levels
    return fake_quant(x, scale, torch.zeros_like(scale, dtype=torch.int32), 0, levels, axis)


def pact_backward(grad: Tensor, x: Tensor, alpha: Tensor, bits: int, axis: Optional[int] = None):
    """PACT straight-through gradients (eq. 3): dx on [0, alpha), dalpha = sum of grad where x >= alpha."""
    a = _shape_for(alpha.to(torch.float32), x, axis)
    x32 = x.to(torch.float32)
    passes = (x32 >= 0) & (x32 < a)
    dx = torch.where(passes, grad, torch.zeros_like(grad))
    dalpha = _reduce_to(torch.where(x32 >= a, grad.to(torch.float64), torch.zeros((), dtype=torch.float64)), x,
                        axis, alpha)
    return dx, dalpha


# --------------------------------------------------------------------------------------------------
# QDrop inside LSQ (csrc/include/pyquant/qdrop_math.h): the counter-based mask, forward and gradients

_M32 = 0xFFFFFFFF
_QDROP_MUL1, _QDROP_MUL2 = 0x85EBCA6B, 0xC2B2AE35
_QDROP_HI_SALT = 0x9E3779B9


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32): the constant is split into 16-bit halves so no int64
    product exceeds 2^48 (a full 32 x 32-bit product would overflow int64)."""
    c_lo, c_hi = c & 0xFFFF, c >> 16
    return (x * c_lo + (((x * c_hi) & 0xFFFF) << 16)) & _M32


def _qdrop_mix(x: Tensor) -> Tensor:
    """qdrop_math.h qdrop_mix (MurmurHash3's fmix32) on int64 tensors holding uint32 values; the values
    are never negative, so >> (arithmetic on int64) is the logical shift of the uint32."""
    x = x ^ (x >> 16)
    x = _mul32(x, _QDROP_MUL1)
    x = x ^ (x >> 13)
    x = _mul32(x, _QDROP_MUL2)
    return x ^ (x >> 16)


def qdrop_threshold(drop_p: float) -> int:
    """ceil(drop_p * 2^24): element i passes in FP32 iff (bits_i >> 8) < this (qdrop_math.h)."""
    return math.ceil(float(drop_p) * 2**24)


def qdrop_u24_at(index: Tensor, seed: int) -> Tensor:
    """2^24 u(seed, i) for flat indices ``index`` (int64 tensor, values >= 0): the top 24 of the 32 hash
    bits of qdrop_math.h, as int64 in [0, 2^24)."""
    lo, hi = index & _M32, index >> 32
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    seed_lo, seed_hi = seed & _M32, seed >> 32
    a = _qdrop_mix(seed_lo ^ _qdrop_mix(seed_hi ^ _qdrop_mix((hi + _QDROP_HI_SALT) & _M32)))
    b = _qdrop_mix((a + _QDROP_HI_SALT) & _M32)
    return _qdrop_mix(_qdrop_mix(lo ^ a) ^ b) >> 8


def qdrop_keep_fp_at(index: Tensor, drop_p: float, seed: int) -> Tensor:
    """True where the element at flat index ``index`` passes through in FP32: u(seed, i) < drop_p, bit for
    bit as the kernels decide it."""
    return qdrop_u24_at(index, seed) < qdrop_threshold(drop_p)


def qdrop_keep_fp(shape, drop_p: float, seed: int, device=None) -> Tensor:
    """The QDrop mask of ``fake_quant_lsq_qdrop`` for a tensor of ``shape``: True where the element at
    row-major flat index i passes through in FP32 (whatever the tensor's memory layout)."""
    index = torch.arange(math.prod(shape), dtype=torch.int64, device=device)
    return qdrop_keep_fp_at(index, drop_p, seed).reshape(tuple(shape))


def fake_quant_lsq_qdrop(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                         axis: Optional[int], drop_p: float, seed: int) -> Tensor:
    """x where the QDrop mask keeps FP32, LSQ's fake-quant value (``fake_quant(..., lsq_rounding=True)``)
    elsewhere."""
    keep = qdrop_keep_fp(x.shape, drop_p, seed, x.device)
    return torch.where(keep, x, fake_quant(x, scale, zero_point, qmin, qmax, axis, lsq_rounding=True))


def lsq_qdrop_backward(grad: Tensor, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                       axis: Optional[int], grad_factor: float, drop_p: float, seed: int):
    """(dx, dscale, dzero_point) of ``fake_quant_lsq_qdrop``: kept elements pass grad to x and nothing to
    the parameters; the others get :func:`lsq_backward` (float64 sums)."""
    keep = qdrop_keep_fp(x.shape, drop_p, seed, x.device)
    quantized_grad = torch.where(keep, torch.zeros_like(grad), grad)
    dx, dscale, dzero = lsq_backward(quantized_grad, x, scale, zero_point, qmin, qmax, axis, grad_factor)
    return torch.where(keep, grad, dx), dscale, dzero
