"""SAWB: statistics-aware weight binning (Choi et al. 2018, "Bridging the accuracy gap for 2-bit
quantized neural networks (QNN)", arXiv:1807.06964, eq. 3): the clip is a closed form of two
moments of the weights, ``alpha* = c1 * sqrt(E[w^2]) + c2 * E[|w|]`` (the paper writes the second
term with a minus sign and c2 > 0; here c2 carries its sign), with coefficients per bit-width fitted
by linear regression of the MSE-optimal clip over a family of distributions.

Our coefficients are derived, not copied: :func:`fit_sawb_coefficients` samples generalized-Gaussian
weights (shape beta from 0.5, sparse, to 4, near-uniform), finds each sample's MSE-optimal symmetric
clip with ops.range_search on our grid [-2^(b-1), 2^(b-1) - 1] (scale = alpha / qmax), and fits
alpha*/sigma = c1 + c2 * E|w|/sigma by least squares. ``SAWB_COEFFICIENTS`` below is the output of
``python -m pyquant.calib.sawb`` (fit_sawb_coefficients with its defaults); tests re-derive it.
Public tables differ by grid: IBM fms-model-optimizer uses e.g. 4 bit (12.68, -12.80); one public
table (pulp-platform/nemo) repeats its 4-bit row as the 2-bit row, which a fit can never produce:
a 2-bit grid's optimal clip is far smaller than a 4-bit one's.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from pyquant import ops
from pyquant.calib.base import RangeEstimator, bits_of, check_grid, check_input, qparams_from_range, reduce_dims

# bits -> (c1, c2) for alpha = c1 * sqrt(E[w^2]) + c2 * E|w|; grid [-2^(b-1), 2^(b-1) - 1].
SAWB_COEFFICIENTS: Dict[int, Tuple[float, float]] = {
    2: (3.0284, -2.4757),
    3: (6.8772, -6.3687),
    4: (11.5201, -11.4916),
    5: (16.6454, -17.3214),
    6: (22.2962, -23.9120),
    8: (35.7851, -39.9772),
}

DEFAULT_SHAPES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


def sample_generalized_gaussian(beta: float, n: int, generator: torch.Generator) -> Tensor:
    """n samples of the generalized Gaussian with shape beta (1: Laplace, 2: Gaussian), unit scale:
    |w| = G^(1/beta) with G ~ Gamma(1/beta, 1), random sign."""
    conc = torch.full((n,), 1.0 / beta, dtype=torch.float64)
    # torch's Gamma sampler has no generator argument: draw through the global RNG, seeded from ours.
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        g = torch.distributions.Gamma(conc, torch.ones_like(conc)).sample()
    finally:
        torch.random.set_rng_state(state)
    sign = torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1
    return (g.pow(1.0 / beta) * sign).float()


def optimal_clip(w: Tensor, bits: int, num_candidates: int = 1000) -> float:
    """MSE-optimal symmetric clip of w on the grid [-2^(b-1), 2^(b-1) - 1] (ops.range_search)."""
    qmax = 2 ** (bits - 1) - 1
    scale, _, _ = ops.range_search(w.reshape(-1), -(2 ** (bits - 1)), qmax, num_candidates=num_candidates)
    return float(scale) * qmax


def fit_sawb_coefficients(bits: int, shapes: Sequence[float] = DEFAULT_SHAPES, n: int = 1 << 18,
                          num_candidates: int = 1000, seed: int = 0) -> Tuple[float, float]:
    """Least-squares (c1, c2) with alpha*/sigma = c1 + c2 * E|w|/sigma over the given shapes."""
    g = torch.Generator().manual_seed(seed + bits)
    rows, target = [], []
    for beta in shapes:
        w = sample_generalized_gaussian(beta, n, g)
        sigma = float(w.double().pow(2).mean().sqrt())
        mean_abs = float(w.double().abs().mean())
        rows.append([1.0, mean_abs / sigma])
        target.append(optimal_clip(w, bits, num_candidates) / sigma)
    a = torch.tensor(rows, dtype=torch.float64)
    b = torch.tensor(target, dtype=torch.float64)[:, None]
    c = torch.linalg.lstsq(a, b).solution[:, 0]
    return float(c[0]), float(c[1])


def sawb_clip(w: Tensor, bits: int, axis: Optional[int] = None,
              coefficients: Optional[Dict[int, Tuple[float, float]]] = None) -> Tensor:
    """alpha = c1 * sqrt(E[w^2]) + c2 * E|w| per channel (or per tensor), clamped to (0, max|w|]."""
    table = SAWB_COEFFICIENTS if coefficients is None else coefficients
    if bits not in table:
        raise ValueError(f"SAWB: no coefficients for {bits} bits (have {sorted(table)})")
    c1, c2 = table[bits]
    dims = reduce_dims(w, axis)
    w64 = w.double()
    rms = w64.pow(2).mean(dim=dims).sqrt().reshape(-1) if dims else w64.abs().reshape(-1)
    mean_abs = w64.abs().mean(dim=dims).reshape(-1) if dims else w64.abs().reshape(-1)
    amax = w64.abs().amax(dim=dims).reshape(-1) if dims else w64.abs().reshape(-1)
    alpha = c1 * rms + c2 * mean_abs
    alpha = torch.where(alpha > 0, alpha, amax)
    return torch.minimum(alpha, amax).float()


class SAWBEstimator(RangeEstimator):
    """SAWB closed-form weight clip (Choi et al. 2018, eq. 3), symmetric, per channel (``axis``) or
    per tensor, for the signed grids [-2^(b-1), 2^(b-1) - 1] with b in SAWB_COEFFICIENTS."""

    name = "sawb"

    def __init__(self, axis: Optional[int] = 0):
        super().__init__(axis)
        self.w: Optional[Tensor] = None

    def observe(self, x: Tensor) -> "SAWBEstimator":
        self.w = check_input(x, self.axis, "SAWBEstimator")
        return self

    def qparams(self, qmin: int, qmax: int):
        check_grid(qmin, qmax, "SAWBEstimator")
        self._require_observed(self.w is not None)
        bits = bits_of(qmin, qmax)
        if qmin != -(2 ** (bits - 1)) or qmax != 2 ** (bits - 1) - 1:
            raise ValueError(f"SAWBEstimator: coefficients are fitted for the signed grid [-2^(b-1), 2^(b-1) - 1], "
                             f"got [{qmin}, {qmax}]")
        alpha = sawb_clip(self.w, bits, self.axis)
        # scale = alpha / qmax with the shared zero-range and usable-scale rules.
        alpha = torch.nan_to_num(torch.as_tensor(alpha, dtype=torch.float32), nan=0.0)
        return qparams_from_range(-alpha, alpha, qmin, qmax, symmetric=True)


def _main() -> None:  # pragma: no cover - regenerates the table above
    for bits in (2, 3, 4, 5, 6, 8):
        c1, c2 = fit_sawb_coefficients(bits)
        print(f"    {bits}: ({c1:.4f}, {c2:.4f}),")


if __name__ == "__main__":  # pragma: no cover
    _main()
