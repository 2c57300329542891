"""The optimisation loop shared by the generators: batches, seeds, progress bar."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pyquant._guards import check_input_fits, check_sample_shape
from pyquant.distill.hooks import batch_seed, model_device, seeded


def check_common(num_samples, input_shape, batch_size, iterations, model=None) -> tuple:
    """The generators' shared arguments, validated; ``model`` given: ``input_shape`` must fit it."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    shape = check_sample_shape(input_shape)
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_input_fits(model, shape, model_device(model))
    return shape


def run_batches(num_samples: int, batch_size: int, seed: int, make_batch: Callable[[int, int], Tensor],
                desc: str, progress: bool) -> Tensor:
    """Calls ``make_batch(n, batch_index)`` under a per-batch seed for each batch and concatenates."""
    out = []
    batches = (num_samples + batch_size - 1) // batch_size
    # Gradients reaching the input underflow to subnormal floats in pretrained networks, which makes
    # CPU convolutions ~10x slower; flush them to zero while generating (restored to torch's default).
    flushing = torch.set_flush_denormal(True)
    try:
        for b in range(batches):
            n = min(batch_size, num_samples - b * batch_size)
            with seeded(batch_seed(seed, b)):
                out.append(make_batch(n, b).detach())
    finally:
        if flushing:
            torch.set_flush_denormal(False)
    return torch.cat(out)


def iterate(iterations: int, desc: str, progress: bool):
    """Iteration range with a tqdm bar (``bar.set_postfix(loss=...)`` is called by the loops)."""
    return tqdm(range(iterations), desc=desc, disable=not progress, leave=False, mininterval=0.5)


def own_input_term(x: Tensor, per_sample: bool = True) -> Tensor:
    """ZeroQ's input term: per-channel statistics of the image against mean 0 and std 1."""
    from pyquant import ops

    c = x.shape[1]
    zeros = torch.zeros(c, device=x.device, dtype=torch.float32)
    eps = 1e-5
    ones = torch.full((c,), 1.0 - eps, device=x.device, dtype=torch.float32)
    unbiased = x[0, 0].numel() > 1 if per_sample else True
    return ops.bn_stat_loss(x, zeros, ones, eps, per_sample, unbiased)


def shape_list(shape: Sequence[int]):
    return list(shape)
