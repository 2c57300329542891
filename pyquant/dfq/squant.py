"""SQuant weight rounding (Guo et al., "SQuant: On-the-Fly Data-Free Quantization via Diagonal
Hessian Approximation", ICLR 2022): round each weight so that the rounding errors of every kernel
and every output channel nearly cancel (the CASE objective, paper eq. 9-11 and Algorithm 1), with no
data and no back-propagation. The flips run in the ``squant_round`` op (C++ on CPU, CUDA twin);
the algorithm is documented in :mod:`pyquant.reference.squant`.
"""

from __future__ import annotations

from numbers import Number
from typing import Union

import torch
from torch import Tensor

from pyquant import ops

__all__ = ["squant_weight", "squant_codes"]

TensorOrNumber = Union[Tensor, Number]


def _per_channel(value: TensorOrNumber, name: str, channels: int, device) -> Tensor:
    if isinstance(value, bool) or not isinstance(value, (Tensor, Number)):
        raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
    t = torch.as_tensor(value, device=device).detach().reshape(-1)
    if t.numel() not in (1, channels):
        raise ValueError(f"{name} must have 1 or {channels} elements (one per channel along axis), got {t.numel()}")
    if not torch.isfinite(t.double()).all():
        raise ValueError(f"{name} must be finite")
    return t.expand(channels)


def squant_codes(weight: Tensor, scale: TensorOrNumber, zero_point: TensorOrNumber, qmin: int, qmax: int,
                 axis: int = 0, kernel_stage: bool = True, channel_stage: bool = True) -> Tensor:
    """The SQuant integer codes (float32, ``weight``'s shape) of ``weight`` on the grid
    ``q in [qmin, qmax]``, ``w ~ (q - zero_point) * scale`` (per channel along ``axis``, or per tensor).
    The scaled weight is ``w * (1 / scale) + zero_point`` in float32, as in ``ops.fake_quant``."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    if weight.dim() < 2:
        raise ValueError(f"weight must have at least 2 dimensions [O, I, ...], got shape {tuple(weight.shape)}")
    if isinstance(axis, bool) or not isinstance(axis, int) or not -weight.dim() <= axis < weight.dim():
        raise ValueError(f"axis={axis!r} is out of range for weight with {weight.dim()} dimensions")
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    axis = axis % weight.dim()
    w = weight.detach().movedim(axis, 0).float()
    channels = w.shape[0]
    s = _per_channel(scale, "scale", channels, w.device).float()
    if not (s > 0).all():
        raise ValueError("scale must be positive")
    z = _per_channel(zero_point, "zero_point", channels, w.device).float()
    bshape = (channels,) + (1,) * (w.dim() - 1)
    x = w * (1.0 / s).view(bshape) + z.view(bshape)
    q = ops.squant_round(x.contiguous(), qmin, qmax, kernel_stage=kernel_stage, channel_stage=channel_stage)
    return q.movedim(0, axis)


def squant_weight(weight: Tensor, scale: TensorOrNumber, zero_point: TensorOrNumber, qmin: int, qmax: int,
                  axis: int = 0, *, kernel_stage: bool = True, channel_stage: bool = True) -> Tensor:
    """The dequantized SQuant-rounded weight ``(q - zero_point) * scale`` (same shape and dtype as
    ``weight``; ``axis``: the output-channel dimension the scale runs along). Not differentiable."""
    q = squant_codes(weight, scale, zero_point, qmin, qmax, axis, kernel_stage, channel_stage)
    channels = weight.shape[axis]
    bshape = [1] * weight.dim()
    bshape[axis % weight.dim()] = channels
    s = _per_channel(scale, "scale", channels, weight.device).float().view(bshape)
    z = _per_channel(zero_point, "zero_point", channels, weight.device).float().view(bshape)
    return ((q - z) * s).to(weight.dtype)
