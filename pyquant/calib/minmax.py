"""Min-max range estimator (running extremes or their exponential moving average)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pyquant.calib.base import RangeEstimator, check_grid, check_input, qparams_from_range, reduce_dims


class MinMaxEstimator(RangeEstimator):
    """Clip range = the observed min and max, per tensor or per channel (``axis``).

    Running mode keeps the extremes of every batch (ZeroQ's ``QuantAct``); with
    ``averaging_constant=c`` it keeps ``m <- m + c * (batch_m - m)`` instead (EMA, as PyTorch's
    MovingAverage observers and GDFQ). ``symmetric`` uses ``max(|min|, |max|)`` with zero-point 0.
    """

    name = "minmax"

    def __init__(self, axis: Optional[int] = None, symmetric: bool = False, averaging_constant: Optional[float] = None):
        super().__init__(axis)
        if averaging_constant is not None and not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"MinMaxEstimator: averaging_constant must be in (0, 1], got {averaging_constant}")
        self.symmetric = symmetric
        self.averaging_constant = averaging_constant
        self.min_val: Optional[Tensor] = None
        self.max_val: Optional[Tensor] = None

    def observe(self, x: Tensor) -> "MinMaxEstimator":
        x = check_input(x, self.axis, "MinMaxEstimator")
        dims = reduce_dims(x, self.axis)
        lo = x.float().amin(dim=dims).reshape(-1) if dims else x.float().reshape(-1)
        hi = x.float().amax(dim=dims).reshape(-1) if dims else x.float().reshape(-1)
        if self.min_val is not None and lo.shape != self.min_val.shape:
            raise ValueError(
                f"MinMaxEstimator.observe: x has {lo.numel()} channels along axis={self.axis}, but earlier batches "
                f"had {self.min_val.numel()}"
            )
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        elif self.averaging_constant is None:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)
        return self

    def clip_range(self):
        self._require_observed(self.min_val is not None)
        return self.min_val, self.max_val

    def qparams(self, qmin: int, qmax: int):
        check_grid(qmin, qmax, "MinMaxEstimator")
        lo, hi = self.clip_range()
        return qparams_from_range(lo, hi, qmin, qmax, self.symmetric)
