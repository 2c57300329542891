"""Shared pieces of the range estimators: input checks, (lo, hi) -> (scale, zero_point)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def check_input(x: Tensor, axis: Optional[int], who: str, check_finite: bool = True) -> Tensor:
    """Rejects non-tensors, non-float, empty and (unless the caller checks its own min/max) non-finite
    input with a clear error; returns x detached."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}.observe: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}.observe: x must be a floating-point tensor, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{who}.observe: x must not be empty, got shape {tuple(x.shape)}")
    if axis is not None and not -x.dim() <= axis < x.dim():
        raise ValueError(f"{who}: axis={axis} is out of range for x with {x.dim()} dimensions")
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{who}.observe: x must be finite, but it contains NaN or Inf")
    return x.detach()


def check_grid(qmin: int, qmax: int, who: str) -> None:
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{who}.qparams: {name} must be an int, got {type(v).__name__}")
    if not qmin < qmax:
        raise ValueError(f"{who}.qparams: qmin must be < qmax, got qmin={qmin}, qmax={qmax}")
    if qmin > 0:
        raise ValueError(f"{who}.qparams: qmin must be <= 0 so that 0 is on the grid, got {qmin}")


def reduce_dims(x: Tensor, axis: Optional[int]):
    return list(range(x.dim())) if axis is None else [d for d in range(x.dim()) if d != axis % x.dim()]


def usable_scale(scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """Scales clamped to what fake_quant accepts (quant_math.h clamp_usable_scale): at least the
    smallest normal float32 (a subnormal scale has an infinite reciprocal: 0 * inf = NaN) and at most
    ``FLT_MAX / (qmax - qmin) * (1 - 2^-23)`` (every dequantized level finite). PyTorch's observers
    floor at ``finfo(float32).eps`` instead; we keep tiny ranges resolved (docs/robustness.md)."""
    f32 = torch.finfo(torch.float32)
    top = torch.tensor(f32.max, dtype=torch.float32) / float(qmax - qmin) * torch.tensor(0.99999988, dtype=torch.float32)
    return scale.clamp(min=f32.tiny, max=float(top))


def qparams_from_range(lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool) -> Tuple[Tensor, Tensor]:
    """Scale (float32) and zero-point (int32) for the clip range [lo, hi] (per channel or one value),
    with the conventions of ops.range_search: symmetric ``scale = max(-lo, hi) / qmax``, zero-point 0;
    asymmetric (range widened to include 0) ``scale = 2 * ((hi / 2 - lo / 2) / (qmax - qmin))`` (no
    overflow for a range of +-FLT_MAX; equal to ``(hi - lo) / (qmax - qmin)`` elsewhere),
    ``zero_point = clamp(qmin - round(lo / scale), qmin, qmax)`` (for a range wider than the widest usable
    grid, the grid centred on the range's midpoint). Scales are clamped by
    :func:`usable_scale`. A zero range gives scale 1, zero-point 0."""
    lo = torch.as_tensor(lo, dtype=torch.float32).reshape(-1).clamp(max=0.0)
    hi = torch.as_tensor(hi, dtype=torch.float32).reshape(-1).clamp(min=0.0)
    if symmetric:
        if qmax <= 0:
            raise ValueError(f"symmetric quantization needs qmax > 0, got {qmax}")
        scale = torch.maximum(-lo, hi) / float(qmax)
    else:
        scale = 2.0 * ((0.5 * hi - 0.5 * lo) / float(qmax - qmin))
    dead = ~(scale > 0)
    wanted, scale = scale, torch.where(dead, torch.ones_like(scale), usable_scale(scale, qmin, qmax))
    if symmetric:
        zero_point = torch.zeros_like(scale)
    else:
        # a range wider than the widest usable grid (near +-FLT_MAX) is clipped evenly at both ends
        centred = torch.round(0.5 * (qmin + qmax) - (0.5 * hi + 0.5 * lo) / scale)
        zero_point = torch.where(scale < wanted, centred, qmin - torch.round(lo / scale)).clamp(qmin, qmax)
        zero_point = torch.where(dead, torch.zeros_like(scale), zero_point)
    return scale, zero_point.to(torch.int32)


def bits_of(qmin: int, qmax: int) -> int:
    return int(math.ceil(math.log2(qmax - qmin + 1)))


class RangeEstimator:
    """Base class: ``observe(x)`` any number of times, then ``qparams(qmin, qmax)`` ->
    ``(scale, zero_point)`` (float32 / int32, one value per channel, or one for the tensor)."""

    name = "estimator"

    def __init__(self, axis: Optional[int] = None):
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise TypeError(f"{type(self).__name__}: axis must be an int or None, got {type(axis).__name__}")
        self.axis = axis

    def observe(self, x: Tensor) -> "RangeEstimator":  # pragma: no cover - interface
        raise NotImplementedError

    def qparams(self, qmin: int, qmax: int) -> Tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def _require_observed(self, ready: bool) -> None:
        if not ready:
            raise RuntimeError(f"{type(self).__name__}.qparams: call observe(x) first")
