"""DSG: Diverse Sample Generation (Zhang, Qin et al., "Diversifying Sample Generation for Accurate
Data-Free Quantization", CVPR 2021, section 3.2-3.3, eq. 6-8).

* Slack Distribution Alignment (SDA, eq. 6-7): the BN-statistic loss is a hinge with per-channel
  margins, ``||max(|mu~ - mu| - delta, 0)||^2 + ||max(|sigma~ - sigma| - gamma, 0)||^2``, so samples
  are not all pushed to the exact statistics. The margins come from the paper's percentile rule,
  computed here from the BN statistics themselves (the public code loads them from ``m.npy``/``n.npy``
  files it never shipped): for a layer whose input has M values per sample and channel and follows
  N(mu_c, sigma_c^2), the sample mean deviates by sigma_c / sqrt(M) * |z| and the sample standard
  deviation by about sigma_c / sqrt(2 (M - 1)) * |z|; the margins are the epsilon-percentile of these
  deviations, ``delta_c = z_eps sigma_c / sqrt(M)``, ``gamma_c = z_eps sigma_c / sqrt(2 (M - 1))`` with
  ``z_eps = Phi^-1((1 + eps) / 2)``.
* Layerwise Sample Enhancement (LSE, eq. 8): sample i gets layer (i mod L) enhanced -- that layer's
  term of sample i is weighted 2, every other term 1 (the PTQ code's form) -- so samples specialise on
  different layers.
Per-sample statistics (unbiased), Adam lr 0.5 with ReduceLROnPlateau, 500 iterations; optional CE on
random labels (``label_weight``).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyquant._guards import any_grad_mode
from pyquant.distill._loop import check_common, iterate, own_input_term, run_batches
from pyquant.distill.hooks import BNStatHooks, bn_layers, model_device
from pyquant.distill.zeroq import init_inputs


def sda_margins(running_var: Tensor, eps: float, values_per_stat: int, percentile: float):
    """(delta, gamma) of SDA for a BN layer (see the module docstring)."""
    if not 0.0 < percentile < 1.0:
        raise ValueError(f"percentile must lie in (0, 1), got {percentile}")
    z = NormalDist().inv_cdf((1.0 + percentile) / 2.0)
    sigma = torch.sqrt(running_var.float() + eps)
    m = max(values_per_stat, 1)
    delta = z * sigma / math.sqrt(m)
    gamma = z * sigma / math.sqrt(2.0 * (m - 1)) if m > 1 else torch.zeros_like(sigma)
    return delta, gamma


def lse_weights(n: int, layer_index: int, num_layers: int, device, boost: float = 2.0) -> Tensor:
    """LSE sample weights for one layer: ``boost`` for samples i with i mod L == layer_index, else 1."""
    w = torch.ones(n, device=device)
    w[torch.arange(n, device=device) % num_layers == layer_index] = boost
    return w


@any_grad_mode
def dsg(
    model: nn.Module,
    num_samples: int,
    input_shape: Sequence[int],
    *,
    batch_size: int = 32,
    iterations: int = 500,
    seed: int = 0,
    percentile: float = 0.9,
    lse: bool = True,
    lr: float = 0.5,
    init: str = "gaussian",
    input_term: bool = True,
    label_weight: float = 0.0,
    num_classes: int = 0,
    backend: str = "pyquant",
    progress: bool = True,
) -> Tensor:
    """``num_samples`` DSG images (SDA margins + LSE weights) for ``model``."""
    shape = check_common(num_samples, input_shape, batch_size, iterations, model)
    device = model_device(model)
    num_layers = len(bn_layers(model))
    was_training = model.training
    model.eval()
    margin_cache = {}

    def margins(index, bn, x):
        m = x[0, 0].numel()
        key = (index, m)
        if key not in margin_cache:
            margin_cache[key] = sda_margins(bn.running_var, bn.eps, m, percentile)
        return margin_cache[key]

    def weights(index, x):
        return lse_weights(x.shape[0], index, num_layers, x.device) if lse else None

    def make_batch(n: int, b: int) -> Tensor:
        x = init_inputs(n, shape, init, device).requires_grad_()
        labels = torch.randint(0, max(num_classes, 1), (n,), device=device) if label_weight > 0 else None
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=100, min_lr=1e-4)
        with BNStatHooks(model, per_sample=True, unbiased=True, backend=backend, margins=margins,
                         sample_weight=weights) as hooks:
            bar = iterate(iterations, f"dsg batch {b}", progress)
            for it in bar:
                opt.zero_grad(set_to_none=True)
                out = model(x)
                loss = hooks.total()
                if input_term:
                    loss = loss + own_input_term(x)
                if labels is not None:
                    loss = loss + label_weight * F.cross_entropy(out, labels)
                loss.backward()
                opt.step()
                value = loss.item()
                sched.step(value)
                if it % 20 == 0:
                    bar.set_postfix(loss=f"{value:.4f}")
        return x

    try:
        return run_batches(num_samples, batch_size, seed, make_batch, "dsg", progress)
    finally:
        model.train(was_training)
