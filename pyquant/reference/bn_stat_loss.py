"""Reference BatchNorm-statistic losses in plain PyTorch: the tests' oracle and the benchmarks' eager
baseline.

* :func:`bn_stat_loss` is the op's contract (DESIGN.md section 6) written with ``torch.var_mean``,
  by default in float64 (``dtype=None`` computes in the input's dtype: the eager baseline).
* :func:`zeroq_own_loss` mirrors ZeroQ's ``own_loss`` (Cai et al. CVPR 2020, eq. 4; per-sample,
  unbiased statistics, ``||A - B||^2 / N`` on means and on ``sqrt(var + eps)``).
* :func:`gdfq_bns_loss` mirrors GDFQ's generator BN term (Xu et al. ECCV 2020, eq. 6): ``nn.MSELoss``
  on batch means and biased batch variances (no eps).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _stat_dims(x: Tensor, per_sample: bool):
    return tuple(range(2, x.dim())) if per_sample else (0,) + tuple(range(2, x.dim()))


def bn_stat_loss(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float = 1e-5,
    per_sample: bool = False,
    unbiased: bool = False,
    mean_margin: Optional[Tensor] = None,
    std_margin: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
    match_var: bool = False,
    dtype: Optional[torch.dtype] = torch.float64,
) -> Tensor:
    """The op's loss with ``var_mean`` (autograd gives the reference gradient)."""
    dt = dtype or x.dtype
    xs = x.to(dt)
    if x.dim() == 2 and per_sample:
        xs = xs.unsqueeze(-1)
    dims = _stat_dims(xs, per_sample)
    var, mean = torch.var_mean(xs, dim=dims, correction=1 if unbiased else 0)  # [N, C] or [C]
    rm = running_mean.to(dt)
    rv = running_var.to(dt)
    mm = mean_margin.to(dt) if mean_margin is not None else torch.zeros_like(rm)
    sm = std_margin.to(dt) if std_margin is not None else torch.zeros_like(rm)
    h_mu = ((mean - rm).abs() - mm).clamp_min(0)
    if match_var:
        dev = var - rv
    else:
        dev = torch.sqrt(var + eps) - torch.sqrt(rv + eps)
    h_dev = (dev.abs() - sm).clamp_min(0)
    per_channel = h_mu.square() + h_dev.square()
    if not per_sample:
        return per_channel.sum()
    per_n = per_channel.sum(1)
    if sample_weight is not None:
        per_n = per_n * sample_weight.to(dt)
    return per_n.sum() / x.shape[0]


def zeroq_own_loss(x: Tensor, running_mean: Tensor, running_var: Tensor, eps: float = 1e-5) -> Tensor:
    """ZeroQ's BN term for one layer, as its ``distill_data.py`` writes it: per-sample mean and
    unbiased variance over H*W, ``own_loss(A, B) = (A - B).norm()**2 / B.size(0)`` against the running
    mean and ``sqrt(running_var + eps)``; float64."""
    n, c = x.shape[:2]
    t = x.double().reshape(n, c, -1)
    mean = t.mean(2)
    std = torch.sqrt(t.var(2) + eps)  # torch.var: unbiased, as in ZeroQ

    def own_loss(a, b):
        return (a - b).norm() ** 2 / b.size(0)

    bn_mean = running_mean.double().unsqueeze(0).expand(n, c)
    bn_std = torch.sqrt(running_var.double() + eps).unsqueeze(0).expand(n, c)
    return own_loss(bn_mean, mean) + own_loss(bn_std, std)


def gdfq_bns_loss(x: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """GDFQ's BN term for one layer: ``MSELoss(mean, running_mean) + MSELoss(var, running_var)`` with
    batch statistics ``input.mean([0, 2, 3])`` and ``input.var([0, 2, 3], unbiased=False)``; float64."""
    t = x.double()
    dims = _stat_dims(t, per_sample=False)
    mean = t.mean(dims)
    var = t.var(dims, unbiased=False)
    mse = torch.nn.MSELoss()
    return mse(mean, running_mean.double()) + mse(var, running_var.double())
