"""Learned quantizers on the fused ops: LSQ / LSQ+, PACT, QIL and SAWB.

Each is an ``nn.Module`` whose ``forward(x)`` returns the fake-quantized tensor and whose clip/step is
an ``nn.Parameter`` trained by the task (or reconstruction) loss. ``from_tensor(x, ...)`` builds one with
its paper's initialisation. The float64 oracles of their forward and gradients are in
:mod:`pyquant.reference.learned`.

- :class:`LSQQuantizer`: Esser et al., "Learned Step Size Quantization", ICLR 2020 (eq. 1-3, section
  2.2): ``v_hat = round(clip(v/s, -Q_N, Q_P)) * s``, the step's gradient scaled by
  ``g = 1/sqrt(N * Q_P)``, initialised to ``s = 2 mean|v| / sqrt(Q_P)``. ``learn_offset=True`` is LSQ+
  (Bhalgat et al., CVPR-W 2020, eq. 4): a learned offset (our zero-point, float, rounded in the forward
  as the affine grid requires) initialised from min/max (their eq. 6 for activations).
- :class:`PACTQuantizer`: Choi et al., "PACT", arXiv 1805.06085 (eq. 1-3): ``y = clip(x, 0, alpha)``
  on ``2^b - 1`` levels; ``dy/dalpha = 1`` where ``x >= alpha``; :meth:`regularization` is the L2 decay
  ``lambda * alpha^2`` the paper adds to the loss (alpha initialised to 10 in the paper).
- :class:`QILQuantizer`: Jung et al., "Learning to Quantize Deep Networks by Optimizing Quantization
  Intervals with Task Loss", CVPR 2019 (eq. 2-5): the interval transformer ``T`` with centre ``c``,
  half-width ``d`` and exponent ``gamma`` (weights; ``gamma = 1`` fixed for activations), then the
  uniform discretiser with a straight-through round (``ops.fake_quant``).
- :class:`SAWBQuantizer`: Choi et al., "Accurate and Efficient 2-bit Quantized Neural Networks",
  SysML 2019 (eq. 3): a closed-form symmetric weight clip recomputed from the weight on every forward
  (``pyquant.calib.sawb.sawb_clip``); no learned parameter, straight-through to the weight.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from pyquant import ops


def _grid(bits: int, signed: bool):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def _reduce_dims(x: Tensor, axis: Optional[int]):
    return tuple(d for d in range(x.dim()) if d != axis) if axis is not None else tuple(range(x.dim()))


class LSQQuantizer(nn.Module):
    """LSQ (and LSQ+ with ``learn_offset``): learned ``scale`` (and float ``zero_point``) on
    ``ops.fake_quant_lsq``. ``axis``: per-channel axis (weights) or None (activations).
    ``numel_per_scale``: N of the gradient scale (weights: elements per channel; activations:
    features per sample); None = taken from the first input."""

    def __init__(self, bits: int, signed: bool, scale: Tensor, zero_point: Optional[Tensor] = None,
                 axis: Optional[int] = None, learn_offset: bool = False, numel_per_scale: Optional[int] = None):
        super().__init__()
        self.bits, self.signed, self.axis = bits, signed, axis
        self.qmin, self.qmax = _grid(bits, signed)
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise ValueError("LSQQuantizer: scale must be finite and > 0")
        self.scale = nn.Parameter(scale.clone())
        zp = torch.zeros_like(scale) if zero_point is None else torch.as_tensor(zero_point).float().reshape(-1)
        if learn_offset:
            self.zero_point = nn.Parameter(zp.clone())
        else:  # integer zero-point buffer: the op returns no gradient for it
            self.register_buffer("zero_point", zp.round().to(torch.int32))
        self.learn_offset = learn_offset
        self.numel_per_scale = numel_per_scale

    @classmethod
    def from_tensor(cls, x: Tensor, bits: int, signed: bool, axis: Optional[int] = None,
                    learn_offset: bool = False) -> "LSQQuantizer":
        """The paper's initialisation from a tensor: ``s = 2 mean|x| / sqrt(Q_P)`` (per channel along
        ``axis``); with ``learn_offset`` (LSQ+) ``s = (max - min) / (Q_P + Q_N)`` and the offset that puts
        ``min`` on the grid's lowest level."""
        x = x.detach().float()
        qmin, qmax = _grid(bits, signed)
        dims = _reduce_dims(x, axis)
        n = x.numel() // (x.shape[axis] if axis is not None else 1)
        if learn_offset:
            lo, hi = x.amin(dim=dims).reshape(-1), x.amax(dim=dims).reshape(-1)
            scale = ((hi - lo) / (qmax - qmin)).clamp(min=1e-8)
            zp = qmin - lo / scale
            return cls(bits, signed, scale, zp, axis, learn_offset=True, numel_per_scale=n)
        scale = (2 * x.abs().mean(dim=dims).reshape(-1) / math.sqrt(qmax)).clamp(min=1e-8)
        numel = n if axis is not None else x[0].numel() if x.dim() > 1 else x.numel()
        return cls(bits, signed, scale, None, axis, numel_per_scale=numel)

    def grad_factor(self, x: Tensor) -> float:
        n = self.numel_per_scale
        if n is None:
            n = x.numel() // (x.shape[self.axis] if self.axis is not None else x.shape[0] if x.dim() > 1 else 1)
        return ops.lsq_grad_factor(n, self.qmax)

    def forward(self, x: Tensor) -> Tensor:
        return ops.fake_quant_lsq(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis,
                                  self.grad_factor(x))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, axis={self.axis}, learn_offset={self.learn_offset}"


class PACTQuantizer(nn.Module):
    """PACT activation quantizer: learned clip ``alpha`` (one value, or one per channel along ``axis``)
    on ``ops.fake_quant_pact``; add :meth:`regularization` to the loss for the paper's L2 decay."""

    def __init__(self, bits: int, alpha=10.0, axis: Optional[int] = None, weight_decay: float = 2e-4):
        super().__init__()
        _grid(bits, False)
        alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        if not bool((alpha > 0).all()):
            raise ValueError("PACTQuantizer: alpha must be > 0")
        self.bits, self.axis, self.weight_decay = bits, axis, float(weight_decay)
        self.alpha = nn.Parameter(alpha.clone())

    @classmethod
    def from_tensor(cls, x: Tensor, bits: int, axis: Optional[int] = None, **kw) -> "PACTQuantizer":
        """alpha from data: the observed maximum (a post-training start; the paper's own start is 10)."""
        dims = _reduce_dims(x, axis)
        return cls(bits, x.detach().float().amax(dim=dims).reshape(-1).clamp(min=1e-8), axis, **kw)

    def regularization(self) -> Tensor:
        return self.weight_decay * self.alpha.pow(2).sum()

    def forward(self, x: Tensor) -> Tensor:
        return ops.fake_quant_pact(x, self.alpha, self.bits, self.axis)


class QILQuantizer(nn.Module):
    """QIL: ``T(x)`` maps the interval ``[c - d, c + d]`` of ``|x|`` onto ``[0, 1]`` (values below are
    pruned to 0, above clipped to 1): ``sign(x) (alpha |x| + beta)^gamma`` with ``alpha = 0.5 / d``,
    ``beta = -0.5 c / d + 0.5`` (weights, eq. 3) or ``alpha x + beta`` unsigned (activations, eq. 5,
    gamma = 1); then ``round(T * q) / q`` with ``q = 2^(b-1) - 1`` (weights) or ``2^b - 1``
    (activations), straight through. ``rescale`` multiplies the result by ``c + d`` so that it is in the
    input's units (the paper trains the network around the unit-range values instead)."""

    def __init__(self, bits: int, signed: bool, center, half_width, gamma: float = 1.0, rescale: bool = True):
        super().__init__()
        _grid(bits, signed)
        self.bits, self.signed, self.rescale = bits, signed, rescale
        self.levels = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
        self.center = nn.Parameter(torch.as_tensor(center, dtype=torch.float32).reshape(1).clone())
        self.half_width = nn.Parameter(torch.as_tensor(half_width, dtype=torch.float32).reshape(1).clone())
        if signed:
            self.gamma = nn.Parameter(torch.tensor([float(gamma)]))
        else:
            self.register_buffer("gamma", torch.ones(1))

    @classmethod
    def from_tensor(cls, x: Tensor, bits: int, signed: bool, **kw) -> "QILQuantizer":
        """The interval [0, max|x|] (no pruning, no clipping: the full-precision network's range),
        gamma = 1, from which the paper's progressive training starts."""
        m = float(x.detach().abs().max().clamp(min=1e-8))
        return cls(bits, signed, m / 2, m / 2, **kw)

    def transform(self, x: Tensor) -> Tensor:
        c, d = self.center, self.half_width.clamp(min=1e-8)
        alpha, beta = 0.5 / d, -0.5 * c / d + 0.5
        mag = x.abs() if self.signed else x
        lin = alpha * mag + beta
        inside = (lin > 0) & (lin < 1)
        if self.signed:  # pow only on the interval: its gamma-gradient has log(lin)
            lin = torch.where(inside, lin, torch.ones_like(lin)).pow(self.gamma)
        t = torch.where(inside, lin, (mag >= c + d).to(x.dtype))
        return torch.sign(x) * t if self.signed else t

    def forward(self, x: Tensor) -> Tensor:
        t = self.transform(x)
        lo = -self.levels if self.signed else 0
        q = ops.fake_quant(t, torch.tensor([1.0 / self.levels], device=x.device), torch.zeros(1, dtype=torch.int32,
                           device=x.device), lo, self.levels)
        return q * (self.center + self.half_width) if self.rescale else q


class SAWBQuantizer(nn.Module):
    """SAWB weight quantizer: symmetric clip ``alpha = c1 sqrt(E w^2) + c2 E|w|`` (per channel along
    ``axis``, or per tensor) recomputed from the weight, grid ``[-2^(b-1)+1, 2^(b-1)-1] * alpha / Q_P``;
    gradient straight through inside the clip."""

    def __init__(self, bits: int, axis: Optional[int] = 0):
        super().__init__()
        self.bits, self.axis = bits, axis
        _, self.qmax = _grid(bits, True)

    def scale(self, w: Tensor) -> Tensor:
        from pyquant.calib.sawb import sawb_clip

        return (sawb_clip(w.detach(), self.bits, self.axis) / self.qmax).clamp(min=1e-12)

    def forward(self, w: Tensor) -> Tensor:
        s = self.scale(w)
        return ops.fake_quant(w, s, torch.zeros_like(s, dtype=torch.int32), -self.qmax, self.qmax, self.axis)
