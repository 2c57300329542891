"""Lp / MSE clip for weights: one call to ops.range_search (all candidates in one pass)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pyquant import ops
from pyquant.calib.base import RangeEstimator, check_grid, check_input


class MSEEstimator(RangeEstimator):
    """Per-channel (``axis``, default 0: output channels of a weight) or per-tensor clip minimising
    ``sum |x - fake_quant(x)|^p`` over ``num_candidates`` clips r_k = k/K of the range
    (ops.range_search; p = 2 is MSE, 2.4 is Genie's choice, inf the max error). Keeps the last
    observed tensor: meant for weights, which are observed once. For activations over many batches
    use :class:`pyquant.calib.HistogramLpEstimator`."""

    name = "mse"

    def __init__(self, axis: Optional[int] = 0, symmetric: bool = True, num_candidates: int = 100, p: float = 2.0):
        super().__init__(axis)
        self.symmetric = symmetric
        self.num_candidates = num_candidates
        self.p = p
        self.x: Optional[Tensor] = None
        self.errors: Optional[Tensor] = None

    def observe(self, x: Tensor) -> "MSEEstimator":
        self.x = check_input(x, self.axis, "MSEEstimator")
        return self

    def qparams(self, qmin: int, qmax: int):
        check_grid(qmin, qmax, "MSEEstimator")
        self._require_observed(self.x is not None)
        scale, zero_point, self.errors = ops.range_search(
            self.x, qmin, qmax, axis=self.axis, symmetric=self.symmetric, num_candidates=self.num_candidates, p=self.p
        )
        return scale, zero_point
