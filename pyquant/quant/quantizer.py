"""FakeQuantizer: a static affine quantizer module on ops.fake_quant."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from pyquant import ops
from pyquant.quant.spec import QuantSpec


class FakeQuantizer(nn.Module):
    """``y = ops.fake_quant(x, scale, zero_point, qmin, qmax, axis)``.

    State (what an int8 conversion reads): buffers ``scale`` (float32) and ``zero_point`` (int32), one
    element or one per channel along ``axis``; ints ``qmin``, ``qmax``, ``bits``; ``axis`` (None = per
    tensor); ``spec`` (the :class:`QuantSpec`). Modes: ``enabled`` (quantize; otherwise identity) and
    ``observing`` (feed every input to the range estimator and pass it through unchanged).
    ``calibrate(x)`` = observe + :meth:`compute_qparams` in one call.
    """

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec
        self.bits = spec.bits
        self.qmin = spec.qmin
        self.qmax = spec.qmax
        self.axis: Optional[int] = spec.axis
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        self.enabled = False  # becomes True once qparams exist
        self.observing = False
        self.calibrated = False
        self._estimator = None
        self.tied_to: Optional[str] = None  # name of the quantizer whose clip range this one copies

    def extra_repr(self) -> str:
        axis = "per-tensor" if self.axis is None else f"axis={self.axis}"
        return f"bits={self.bits}, qmin={self.qmin}, qmax={self.qmax}, {axis}, estimator={self.spec.estimator}"

    # -- calibration -------------------------------------------------------------------------------
    def observe(self, x: Tensor) -> None:
        if self._estimator is None:
            self._estimator = self.spec.make_estimator()
        self._estimator.observe(x.detach().float())

    def compute_qparams(self) -> None:
        if self._estimator is None:
            raise RuntimeError("FakeQuantizer.compute_qparams: nothing observed yet")
        scale, zero_point = self._estimator.qparams(self.qmin, self.qmax)
        self.set_qparams(scale, zero_point)
        self._estimator = None

    def calibrate(self, x: Tensor) -> "FakeQuantizer":
        self._estimator = None
        self.observe(x)
        self.compute_qparams()
        return self

    def set_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).to(self.scale.device)
        zero_point = torch.as_tensor(zero_point).reshape(-1).to(torch.int32).to(self.scale.device)
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise ValueError("FakeQuantizer.set_qparams: scale must be finite and > 0")
        self.scale = scale.clone()
        self.zero_point = zero_point.clone()
        self.calibrated = True
        self.enabled = True

    def clip_range(self):
        """(lo, hi) of the grid in real units, per channel or one value."""
        zp = self.zero_point.float()
        return (self.qmin - zp) * self.scale, (self.qmax - zp) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        return ops.fake_quant(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis)
