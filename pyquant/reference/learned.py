"""Float64 oracles of the learned quantizers (pyquant.quant.learned), written from the papers'
equations with autograd and the straight-through round ``r(y) = y + (round(y) - y).detach()``: the
tests compare the modules' forward and every gradient against these."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _ste_round(y: Tensor) -> Tensor:
    return y + (torch.round(y) - y).detach()


def _per(p: Tensor, x: Tensor, axis: Optional[int]) -> Tensor:
    if axis is None or p.numel() == 1:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def lsq(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: Optional[int], g: float) -> Tensor:
    """LSQ eq. 1-2 with the gradient scale of section 2.2 applied to the step (and LSQ+ offset):
    ``s' = s g + (s - s g).detach()``; the zero-point is rounded with a straight-through round."""
    s = scale * g + (scale - scale * g).detach()
    z = zero_point * g + (zero_point - zero_point * g).detach()
    s, z = _per(s, x, axis), _per(_ste_round(z).clamp(qmin, qmax), x, axis)
    # round, then clip: the same values as eq. 1's clip-then-round; the clip's gradient decides on the
    # rounded level, as torch._fake_quantize_learnable_* and the fused kernel do
    return (torch.clamp(_ste_round(x / s + z), qmin, qmax) - z) * s


def pact(x: Tensor, alpha: Tensor, bits: int, axis: Optional[int] = None) -> Tensor:
    """PACT eq. 1-2: ``y = 0.5(|x| - |x - a| + a)``, ``y_q = round(y n / a) a / n``; the round's STE
    gives eq. 3 (``dy_q/da = 1`` for ``x >= a``) once ``a`` inside the round is detached, as the
    paper's derivation does."""
    a = _per(alpha, x, axis)
    n = 2 ** bits - 1
    y = 0.5 * (x.abs() - (x - a).abs() + a)
    step = a.detach() / n
    return _ste_round(y / step) * step


def qil(x: Tensor, center: Tensor, half_width: Tensor, gamma: Tensor, bits: int, signed: bool,
        rescale: bool = True) -> Tensor:
    """QIL eq. 2-5, the discretiser's round straight through."""
    c, d = center.reshape(()), half_width.reshape(())
    mag = x.abs() if signed else x
    lin = (0.5 / d) * mag + (-0.5 * c / d + 0.5)
    inside = (lin > 0) & (lin < 1)
    core = torch.where(inside, lin, torch.ones_like(lin)).pow(gamma.reshape(())) if signed else lin
    t = torch.where(inside, core, (mag >= c + d).to(x.dtype))
    if signed:
        t = torch.sign(x) * t
    q = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    out = _ste_round(t * q) / q
    return out * (c + d) if rescale else out


def sawb(w: Tensor, bits: int, axis: Optional[int], c1: float, c2: float) -> Tensor:
    """SAWB eq. 3 clip from the weight's moments, then the symmetric grid with the clip held fixed."""
    dims = tuple(i for i in range(w.dim()) if i != axis) if axis is not None else tuple(range(w.dim()))
    w0 = w.detach()
    alpha = c1 * w0.pow(2).mean(dim=dims, keepdim=True).sqrt() + c2 * w0.abs().mean(dim=dims, keepdim=True)
    alpha = torch.minimum(torch.where(alpha > 0, alpha, w0.abs().amax(dim=dims, keepdim=True)),
                          w0.abs().amax(dim=dims, keepdim=True))
    qmax = 2 ** (bits - 1) - 1
    s = alpha / qmax
    v = w / s
    inside = (v >= -qmax - 0.5) & (v <= qmax + 0.5)
    return torch.where(inside, _ste_round(v).clamp(-qmax, qmax), _ste_round(v).clamp(-qmax, qmax).detach()) * s
