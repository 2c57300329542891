"""DeepInversion's image prior (Yin et al., "Dreaming to Distill", CVPR 2020, section 3.2, eq. 3-4):
a total-variation term that penalises differences between neighbouring pixels, and random jitter and
flips of the image at every optimisation step, so that what the network's statistics are matched on
is a smooth, shift-invariant image instead of high-frequency noise. ZeroQ's images without it hold 59 %
of their non-DC energy above half the Nyquist frequency, real CIFAR-10 images 7 % (docs/pipeline.md)."""

from __future__ import annotations

import torch
from torch import Tensor


def total_variation(x: Tensor) -> Tensor:
    """``R_TV`` (DeepInversion eq. 4, the squared form): per sample, the mean over pixels and channels of
    the squared differences to the right and lower neighbours (summed); then the mean over samples."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    return (dh + dw).mean()


def jitter_and_flip(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """The image batch rolled by the same random (dy, dx) in [-max_shift, max_shift] and, with probability
    1/2, flipped horizontally (DeepInversion's augmentation of the optimised images; differentiable)."""
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(3)
    return x
