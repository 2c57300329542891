"""Plain-PyTorch SQuant rounding: the oracle of ``pyquant.ops.squant_round`` (bit for bit).

SQuant (Guo et al., "SQuant: On-the-Fly Data-Free Quantization via Diagonal Hessian Approximation",
ICLR 2022, section 4 and Algorithm 1) rounds a weight so that the *Constrained Absolute Sum of Error*
is small: every element stays within one level of its value, and the rounding errors of each kernel
and of each output channel sum to at most 0.5 in magnitude. Our formulation, written from the paper
(not from the released CUDA extension), for codes ``x`` of shape [O, I, K] (K = kh*kw, 1 for a
linear layer):

1. SQuant-E: ``xc = clamp(x, qmin, qmax)``, ``q = round_half_even(xc)``, error ``d = q - xc``.
   Errors are measured against the clamped value: the clipping error is not a rounding error.
2. SQuant-K, per kernel (o, i): ``e = sum d``; ``n = round_half_even(|e|)``; with ``s = sign(e)``,
   move the ``n`` elements with the largest ``s * d`` (among ``s * d > 0``) one level against ``s``
   (``q -= s``, ``d -= s``). Ties go to the lower element index. Afterwards ``|e| <= 0.5``.
3. SQuant-C, per output channel o: each kernel with ``e_k != 0`` offers one candidate move against
   the sign of its own sum ``s_k``: the element with the largest ``s_k * d`` (lowest index on ties) --
   either a fresh flip of an element rounded the "wrong" way, or the revert of an element the
   kernel stage over-flipped. With the channel sum ``E = sum_k e_k``, ``N = round_half_even(|E|)``
   and ``S = sign(E)``, the ``N`` candidates of kernels with ``s_k = S`` whose priority ``S * d`` is
   largest (lower kernel index on ties) are applied.

Guarantees (both stages on; proofs in docs/squant_mixed.md): every code is in [qmin, qmax] and within
one level of ``round(xc)`` with ``|q - xc| < 1``; every channel's error sum is within 0.5; every
kernel's sum is within 0.5 after SQuant-K and strictly within 1 after SQuant-C (a kernel touched by
the channel stage moves from (0, 0.5] to (-1, -0.5] or the mirror image). Enough flippable elements
always exist: an element with ``d > 0`` satisfies ``q > xc >= qmin``, so it can move down without
leaving the grid (and symmetrically), which is why clamping first makes the bounds hold at the
clamp boundaries too; clamped elements (``x`` outside [qmin, qmax]) have ``d = 0`` and never move.

Sums are accumulated in float64; for float32 inputs every ``d`` is exact and the sums of up to
~2^9 of them are exact in any order unless some ``|x|`` is below ~2^-20, so the C++ kernel (which
adds sequentially) and this reference (pairwise) agree bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["squant_round", "squant_view"]


def squant_view(x: Tensor) -> Tensor:
    """[O, I, *kernel] -> [O, I, K]; [O, I] -> [O, I, 1]."""
    if x.dim() < 2:
        raise ValueError(f"squant_round: x must have at least 2 dimensions [O, I, ...], got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], x.shape[1], -1)


def _best_move(err: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """Per group (last dim), the element whose move against ``direction`` is cheapest: the largest
    ``direction * err`` among those > 0 (first index on ties). Returns (index, priority); priority
    is -inf where the group has no candidate."""
    prio = direction.unsqueeze(-1) * err
    prio = torch.where(prio > 0, prio, torch.full_like(prio, -float("inf")))
    best, idx = prio.max(dim=-1)  # max returns the first maximal index
    return idx, best


def _flip_top(q: Tensor, err: Tensor, prio: Tensor, count: Tensor, direction: Tensor) -> None:
    """In each row of ``prio`` ([..., L]; -inf = not movable), move the ``count`` entries with the
    largest priority (lower index on ties) one level against ``direction`` (in place)."""
    order = torch.sort(prio, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(prio.shape[-1], device=prio.device).expand_as(order))
    flip = (rank < count.unsqueeze(-1)) & torch.isfinite(prio)
    step = direction.unsqueeze(-1) * flip.to(err.dtype)
    q.sub_(step)
    err.sub_(step)


def squant_round(x: Tensor, qmin: int, qmax: int, kernel_stage: bool = True, channel_stage: bool = True) -> Tensor:
    """SQuant integer codes (as floats of x's dtype) for the scaled weight ``x`` [O, I, *kernel]
    (kernel_stage / channel_stage off give SQuant-E, -EK, -EC)."""
    if qmin >= qmax:
        raise ValueError(f"squant_round: qmin ({qmin}) must be < qmax ({qmax})")
    v = squant_view(x).to(torch.float64)
    xc = v.clamp(qmin, qmax)
    q = torch.round(xc)
    err = q - xc
    e = err.sum(-1)  # [O, I]
    if kernel_stage:
        direction = torch.sign(e)
        count = torch.round(e.abs())
        prio = direction.unsqueeze(-1) * err
        prio = torch.where(prio > 0, prio, torch.full_like(prio, -float("inf")))
        _flip_top(q, err, prio, count, direction)
        flipped = torch.minimum(count, torch.isfinite(prio).sum(-1).to(count.dtype))
        e = e - direction * flipped
    if channel_stage:
        kernel_dir = torch.sign(e)  # [O, I]
        cand_idx, cand_prio = _best_move(err, kernel_dir)
        total = e.sum(-1)  # [O]
        direction = torch.sign(total)
        count = torch.round(total.abs())
        eligible = (kernel_dir == direction.unsqueeze(-1)) & (kernel_dir != 0) & torch.isfinite(cand_prio)
        prio = torch.where(eligible, cand_prio, torch.full_like(cand_prio, -float("inf")))
        order = torch.sort(prio, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(prio.shape[-1], device=prio.device).expand_as(order))
        chosen = (rank < count.unsqueeze(-1)) & eligible  # [O, I]
        step = torch.zeros_like(err)
        step.scatter_(-1, cand_idx.unsqueeze(-1), (direction.unsqueeze(-1) * chosen.to(err.dtype)).unsqueeze(-1))
        q.sub_(step)
        err.sub_(step)
    return q.reshape(x.shape).to(x.dtype)
