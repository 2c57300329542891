"""Reference fake quantization (forward, STE mask, LSQ and PACT gradients) in plain PyTorch.

The forward mirrors csrc/include/pyquant/quant_math.h operation by operation in float32 (x * (1/s),
round half to even, zero-point before or after rounding, clamp, dequantize), so it is bit-exact with
the kernels and with ``torch.fake_quantize_*``. The gradient references accumulate in float64.
"""

from __future__ import annotations

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
