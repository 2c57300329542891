"""ZeroQ distilled data (Cai et al., "ZeroQ: A Novel Zero Shot Quantization Framework", CVPR 2020,
section 3.2, eq. 4).

Random inputs are optimised so that, at every BatchNorm layer, the per-sample mean and standard
deviation of the layer input match the stored running statistics:

    min_x  sum_l ||mu_l~(x) - mu_l||^2 + ||sigma_l~(x) - sigma_l||^2        (eq. 4)

plus the same term on the input image against mean 0 / std 1. Recipe (as in the paper's code): one
batch at a time, Adam with lr 0.5, ReduceLROnPlateau (patience 100, min_lr 1e-4), 500 iterations,
per-sample statistics with the unbiased variance, no label term. ``init="gaussian"`` (paper, default)
or ``"uniform"`` (the released code's ``(randint(0, 255) - 127.5) / 5418.75``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyquant._guards import any_grad_mode
from pyquant.distill._loop import check_common, iterate, own_input_term, run_batches
from pyquant.distill.hooks import BNStatHooks, batch_seed, model_device
from pyquant.distill.image_prior import jitter_and_flip, total_variation


def init_inputs(n: int, shape: Sequence[int], init: str, device) -> Tensor:
    if init == "gaussian":
        return torch.randn((n,) + tuple(shape), device=device)
    if init == "uniform":
        return (torch.randint(0, 256, (n,) + tuple(shape), device=device).float() - 127.5) / 5418.75
    raise ValueError(f"init must be 'gaussian' or 'uniform', got {init!r}")


@any_grad_mode
def zeroq(
    model: nn.Module,
    num_samples: int,
    input_shape: Sequence[int],
    *,
    batch_size: int = 32,
    iterations: int = 500,
    seed: int = 0,
    init: str = "gaussian",
    lr: float = 0.5,
    input_term: bool = True,
    label_weight: float = 0.0,
    num_classes: int = 0,
    tv_weight: float = 0.0,
    jitter: int = 0,
    backend: str = "pyquant",
    progress: bool = True,
) -> Tensor:
    """``num_samples`` ZeroQ images of shape ``input_shape`` (C, H, W) for ``model`` (eval mode; not
    modified). ``label_weight > 0`` adds cross-entropy on random labels (optional, not in ZeroQ).
    ``tv_weight`` / ``jitter``: DeepInversion's image prior (:mod:`pyquant.distill.image_prior`; not in
    ZeroQ): ``tv_weight * total_variation(x)`` added to the loss, and the network sees the images rolled by
    up to ``jitter`` pixels and randomly flipped at every step.
    Fixed ``seed`` -> identical data on the same machine and thread count."""
    shape = check_common(num_samples, input_shape, batch_size, iterations, model)
    if not isinstance(tv_weight, (int, float)) or isinstance(tv_weight, bool) or not 0.0 <= tv_weight < float("inf"):
        raise ValueError(f"zeroq: tv_weight must be a finite number >= 0, got {tv_weight!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
        raise ValueError(f"zeroq: jitter must be an int >= 0, got {jitter!r}")
    device = model_device(model)
    was_training = model.training
    model.eval()

    def make_batch(n: int, b: int) -> Tensor:
        x = init_inputs(n, shape, init, device).requires_grad_()
        labels = torch.randint(0, max(num_classes, 1), (n,), device=device) if label_weight > 0 else None
        opt = torch.optim.Adam([x], lr=lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=100, min_lr=1e-4)
        shifts = torch.Generator().manual_seed(batch_seed(seed, b))
        with BNStatHooks(model, per_sample=True, unbiased=True, backend=backend) as hooks:
            bar = iterate(iterations, f"zeroq batch {b}", progress)
            for it in bar:
                opt.zero_grad(set_to_none=True)
                out = model(jitter_and_flip(x, jitter, shifts) if jitter else x)
                loss = hooks.total()
                if input_term:
                    loss = loss + own_input_term(x)
                if tv_weight:
                    loss = loss + tv_weight * total_variation(x)
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
        return run_batches(num_samples, batch_size, seed, make_batch, "zeroq", progress)
    finally:
        model.train(was_training)
