"""QuantSpec: what one quantizer does (bit-width, grid, granularity, range estimator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ESTIMATORS = ("minmax", "percentile", "mse", "entropy")


@dataclass(frozen=True)
class QuantSpec:
    """One quantizer's settings.

    ``bits`` 2..8 (16 also accepted); ``signed`` grid ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b-1]``;
    ``symmetric`` (zero-point 0) or affine; ``axis`` the per-channel axis (``None``: per tensor);
    ``estimator`` one of ``minmax``, ``percentile``, ``mse``, ``entropy`` (pyquant.calib), with
    ``estimator_kwargs`` passed to its constructor (e.g. ``{"percentile": 99.99}``, ``{"p": 2.4}``).
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    axis: Optional[int] = None
    estimator: str = "minmax"
    estimator_kwargs: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"QuantSpec: bits must be an int, got {type(self.bits).__name__}")
        if not (2 <= self.bits <= 8 or self.bits == 16):
            raise ValueError(f"QuantSpec: bits must be in 2..8 (or 16), got {self.bits}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"QuantSpec: estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int)):
            raise TypeError(f"QuantSpec: axis must be an int or None, got {type(self.axis).__name__}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def replace(self, **changes) -> "QuantSpec":
        values = {k: getattr(self, k) for k in ("bits", "signed", "symmetric", "axis", "estimator")}
        values["estimator_kwargs"] = dict(self.estimator_kwargs)
        values.update(changes)
        return QuantSpec(**values)

    def make_estimator(self):
        """A fresh pyquant.calib estimator for this spec."""
        from pyquant import calib

        kw = dict(self.estimator_kwargs)
        if self.estimator == "minmax":
            return calib.MinMaxEstimator(axis=self.axis, symmetric=self.symmetric, **kw)
        if self.estimator == "percentile":
            return calib.PercentileEstimator(axis=self.axis, symmetric=self.symmetric, **kw)
        if self.estimator == "mse":
            if self.axis is not None:  # weights: one range_search call over the whole tensor
                return calib.MSEEstimator(axis=self.axis, symmetric=self.symmetric, **kw)
            return calib.HistogramLpEstimator(axis=None, symmetric=self.symmetric, **kw)
        return calib.EntropyEstimator(axis=self.axis, **kw)
