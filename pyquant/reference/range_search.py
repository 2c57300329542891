"""Reference clipping-range search (DESIGN.md section 6, ``ops.range_search``) in plain PyTorch.

``candidate_params`` rebuilds the K candidate scales and zero-points with the float32 operations of
csrc/include/pyquant/calib_math.h, in the same order, so they are bit-identical to the kernel's.
``range_search`` is the brute-force oracle: a loop over the K candidates calling
``torch.fake_quantize_per_channel_affine`` and summing the errors in float64.
``grid_search_eager`` is the fastest eager-PyTorch grid search we know (the benchmark baseline): a
loop over candidates, each one fused ATen fake-quant kernel plus a float32 reduction.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def channel_rows(x: Tensor, axis: Optional[int]) -> Tensor:
    """x as a float32 matrix [channels, elements] (one row per tensor when axis is None)."""
    if axis is None:
        return x.reshape(1, -1).float()
    return x.movedim(axis, 0).reshape(x.shape[axis], -1).float()


def usable_scale(scale: Tensor, qmin: int, qmax: int) -> Tensor:
    """quant_math.h clamp_usable_scale: scales clamped to [smallest normal float32,
    FLT_MAX / (qmax - qmin) * (1 - 2^-23)] (finite reciprocal; finite dequantized levels)."""
    f32 = torch.finfo(torch.float32)
    hi = torch.tensor(f32.max, dtype=torch.float32) / float(qmax - qmin) * torch.tensor(0.99999988, dtype=torch.float32)
    return scale.clamp(min=f32.tiny, max=float(hi))


def candidate_params(rows: Tensor, qmin: int, qmax: int, symmetric: bool, num_candidates: int) -> Tuple[Tensor, Tensor]:
    """Scales [C, K] (float32) and zero-points [C, K] (int32) of candidates k = 1..K."""
    lo = rows.amin(1).clamp(max=0.0)
    hi = rows.amax(1).clamp(min=0.0)
    ratio = torch.arange(1, num_candidates + 1, dtype=torch.float32) / float(num_candidates)
    if symmetric:
        absmax = torch.maximum(-lo, hi)
        scale = usable_scale((ratio[None, :] * absmax[:, None]) / float(qmax), qmin, qmax)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    lo_k = ratio[None, :] * lo[:, None]
    hi_k = ratio[None, :] * hi[:, None]
    wanted = 2.0 * ((0.5 * hi_k - 0.5 * lo_k) / float(qmax - qmin))
    scale = usable_scale(wanted, qmin, qmax)
    centred = torch.round(0.5 * (qmin + qmax) - (0.5 * hi_k + 0.5 * lo_k) / scale)  # a span wider than any grid
    zero_point = torch.where(scale < wanted, centred, qmin - torch.round(lo_k / scale)).clamp(qmin, qmax)
    return scale, torch.nan_to_num(zero_point, nan=0.0).to(torch.int32)


def _degenerate(rows: Tensor, symmetric: bool) -> Tensor:
    lo = rows.amin(1).clamp(max=0.0)
    hi = rows.amax(1).clamp(min=0.0)
    return ~(torch.maximum(-lo, hi) > 0) if symmetric else ~(hi - lo > 0)


def _pick(errors: Tensor) -> Tensor:
    """argmin per row, ties to the larger index."""
    k = errors.shape[-1]
    return k - 1 - errors.flip(-1).argmin(-1)


def _finish(rows, scale, zero_point, errors, symmetric, axis):
    best = _pick(errors)
    idx = torch.arange(rows.shape[0])
    s, z = scale[idx, best].clone(), zero_point[idx, best].clone()
    dead = _degenerate(rows, symmetric)
    s[dead], z[dead] = 1.0, 0
    errors = errors.clone()
    errors[dead] = 0.0
    return s, z, (errors[0] if axis is None else errors)


def range_search(x: Tensor, qmin: int, qmax: int, axis: Optional[int] = None, symmetric: bool = True,
                 num_candidates: int = 100, p: float = 2.0):
    """Brute force: for each candidate, torch.fake_quantize_per_channel_affine, then
    sum |x - fq|^p (max for p = inf) per channel in float64. Returns (scale, zero_point, errors)."""
    rows = channel_rows(x, axis)
    scale, zero_point = candidate_params(rows, qmin, qmax, symmetric, num_candidates)
    x64 = rows.double()
    dead = _degenerate(rows, symmetric)
    errors = torch.zeros(rows.shape[0], num_candidates, dtype=torch.float64)
    for k in range(num_candidates):
        s = torch.where(dead, torch.ones_like(scale[:, k]), scale[:, k])
        fq = torch.fake_quantize_per_channel_affine(rows, s, zero_point[:, k], 0, qmin, qmax)
        d = (x64 - fq.double()).abs()
        errors[:, k] = d.amax(1) if math.isinf(p) else d.pow(p).sum(1)
    return _finish(rows, scale, zero_point, errors, symmetric, axis)


def grid_search_eager(x: Tensor, qmin: int, qmax: int, axis: Optional[int] = 0, symmetric: bool = True,
                      num_candidates: int = 100, p: float = 2.0):
    """The benchmark baseline: the same search in eager PyTorch, float32, one fused ATen fake-quant
    kernel and one reduction per candidate (faster here than broadcasting candidates in chunks)."""
    rows = channel_rows(x, axis)
    scale, zero_point = candidate_params(rows, qmin, qmax, symmetric, num_candidates)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    errors = torch.empty(rows.shape[0], num_candidates, dtype=torch.float32)
    for k in range(num_candidates):
        fq = torch.fake_quantize_per_channel_affine(rows, scale[:, k].contiguous(), zero_point[:, k].contiguous(),
                                                    0, qmin, qmax)
        fq.sub_(rows).abs_()
        errors[:, k] = fq.amax(1) if math.isinf(p) else fq.pow_(p).sum(1)
    return _finish(rows, scale, zero_point, errors, symmetric, axis)


def grid_search_eager_chunked(x: Tensor, qmin: int, qmax: int, axis: Optional[int] = 0, symmetric: bool = True,
                              num_candidates: int = 100, p: float = 2.0, chunk: int = 10):
    """Alternative eager baseline: candidates broadcast in chunks ([C, chunk, N] temporaries)."""
    rows = channel_rows(x, axis)
    scale, zero_point = candidate_params(rows, qmin, qmax, symmetric, num_candidates)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = zero_point.float()
    errors = torch.empty(rows.shape[0], num_candidates, dtype=torch.float32)
    xr = rows[:, None, :]
    for k0 in range(0, num_candidates, chunk):
        s = scale[:, k0:k0 + chunk, None]
        z = zp[:, k0:k0 + chunk, None]
        q = torch.round(xr * (1.0 / s)).add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)
        q.sub_(xr).abs_()
        errors[:, k0:k0 + chunk] = q.amax(2) if math.isinf(p) else q.pow_(p).sum(2)
    return _finish(rows, scale, zero_point, errors, symmetric, axis)
