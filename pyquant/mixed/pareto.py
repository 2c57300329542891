"""Bit allocation on the Pareto frontier of model size vs. total sensitivity (ZeroQ, Cai et al.,
CVPR 2020, section 3.3): with layer sizes P_i (weight count) and sensitivities Omega_i(k),

    min_{k_i}  sum_i Omega_i(k_i)   subject to   sum_i P_i * k_i <= S_target,

assuming the layers' contributions add up. The ZeroQ authors never released their solver (they
describe a dynamic program over size bins). Ours is exact and needs no bins: sizes are integer bit
counts, and the dynamic program keeps, after each layer, the *set of non-dominated partial
assignments* (no other one is both no larger and strictly less sensitive). Merging a layer multiplies
the set by the number of bit options, then prunes it; the set never exceeds the number of distinct
total sizes, which is small for real networks (many layers share a size). ``resolution`` (bits)
optionally coarsens sizes by rounding each layer's cost *up* to a multiple of it, which bounds the
frontier for very deep networks; the result then stays within the budget but may be slightly
sub-optimal. Ties: among assignments of equal total sensitivity the smaller one is kept, and among
equal (size, sensitivity) the one found first (bit options in ascending order, layer by layer).
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

__all__ = ["allocate_bits", "pareto_frontier"]

FrontierPoint = Tuple[int, float, Dict[str, int]]


def _check(sensitivity: Mapping, sizes: Mapping) -> List[str]:
    if not isinstance(sensitivity, Mapping) or not sensitivity:
        raise ValueError("sensitivity must be a non-empty mapping {layer: {bits: value}}")
    if not isinstance(sizes, Mapping):
        raise TypeError(f"sizes must be a mapping {{layer: weight count}}, got {type(sizes).__name__}")
    names = list(sensitivity)
    missing = [n for n in names if n not in sizes]
    if missing:
        raise ValueError(f"sizes: no size given for layers {missing}")
    for name in names:
        size = sizes[name]
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"sizes[{name!r}] must be a positive int, got {size!r}")
        options = sensitivity[name]
        if not isinstance(options, Mapping) or not options:
            raise ValueError(f"sensitivity[{name!r}] must be a non-empty mapping {{bits: value}}")
        for bits, value in options.items():
            if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0:
                raise ValueError(f"sensitivity[{name!r}]: bit-widths must be positive ints, got {bits!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"sensitivity[{name!r}][{bits}] must be finite, got {value!r}")
    return names


def _frontier(sensitivity: Mapping, sizes: Mapping, resolution: int) -> List[Tuple[int, int, float, tuple]]:
    """Non-dominated (binned cost, true size, total sensitivity, bits tuple), by increasing cost."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int (bits), got {resolution!r}")
    names = _check(sensitivity, sizes)
    points: List[Tuple[int, int, float, tuple]] = [(0, 0, 0.0, ())]
    for name in names:
        options = sorted(sensitivity[name].items())
        size = sizes[name]
        merged = [
            (cost + -(-size * bits // resolution) * resolution, true + size * bits, total + float(value), assign + (bits,))
            for cost, true, total, assign in points
            for bits, value in options
        ]
        # Stable sort by (cost, sensitivity): equal pairs keep the generation order (the tie rule).
        merged.sort(key=lambda p: (p[0], p[2]))
        points = []
        best = math.inf
        for p in merged:
            if p[2] < best:
                points.append(p)
                best = p[2]
    return points


def pareto_frontier(sensitivity: Mapping, sizes: Mapping, resolution: int = 1) -> List[FrontierPoint]:
    """All Pareto-optimal bit assignments: a list of ``(size_bits, total_sensitivity, {layer: bits})``
    by increasing size and strictly decreasing sensitivity. ``size_bits = sum_i sizes[i] * bits_i``."""
    names = list(sensitivity)
    return [(true, total, dict(zip(names, assign))) for _, true, total, assign in _frontier(sensitivity, sizes, resolution)]


def allocate_bits(sensitivity: Mapping, sizes: Mapping, budget_bits: int, resolution: int = 1) -> Dict[str, int]:
    """``{layer: bits}`` minimising the total sensitivity with ``sum_i sizes[i] * bits_i <= budget_bits``
    (exact; among optimal assignments the smallest). Raises ValueError when even the smallest
    assignment exceeds the budget."""
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float)) or not math.isfinite(budget_bits):
        raise TypeError(f"budget_bits must be a finite number of bits, got {budget_bits!r}")
    points = _frontier(sensitivity, sizes, resolution)
    feasible = [p for p in points if p[0] <= budget_bits]
    if not feasible:
        raise ValueError(
            f"budget_bits={budget_bits} is infeasible: the smallest assignment needs {points[0][0]} bits"
            + (f" (with resolution={resolution})" if resolution > 1 else "")
        )
    return dict(zip(list(sensitivity), feasible[-1][3]))
