"""Label-preserving views of (synthetic) images for training on them: random horizontal flips and
translations, the augmentation of the networks' own training (He et al., CVPR 2016, section 4.2: 4-pixel
padding and random 32x32 crops, horizontal flips). A fixed synthetic set of a few hundred samples is what
reconstruction and KD fine-tuning overfit (docs/pipeline.md); views of it are free, new samples cost a
distillation each."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def default_pad(height: int) -> int:
    """Translation range: an eighth of the side (4 pixels at 32x32, as in He et al.)."""
    return max(1, height // 8)


def flip_and_shift(x: Tensor, generator: torch.Generator, pad: Optional[int] = None) -> Tensor:
    """Per sample of the image batch ``x`` (N, C, H, W): a horizontal flip with probability 1/2, then a
    random crop of the original size after zero padding by ``pad`` (default :func:`default_pad`), all
    drawn from ``generator``."""
    if x.dim() != 4:
        raise ValueError(f"flip_and_shift: x must be an image batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    pad = default_pad(h) if pad is None else pad
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.reshape(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def with_views(data: Tensor, views: int, seed: int) -> Tensor:
    """``data`` followed by ``views`` augmented copies of it (:func:`flip_and_shift`, deterministic under
    ``seed``): (1 + views) * N samples."""
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ValueError(f"with_views: views must be a non-negative int, got {views!r}")
    if views == 0:
        return data
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([data] + [flip_and_shift(data, generator) for _ in range(views)])


def low_pass(x: Tensor, keep: float) -> Tensor:
    """Ideal low-pass filter of the image batch ``x`` (N, C, H, W): the 2-d spatial frequencies with
    ``|f| <= keep * f_nyquist`` (radial, per axis normalised to the Nyquist frequency) are kept, the rest
    set to zero. Synthetic images carry more high-frequency energy than natural ones (SynQ, Kim et al.,
    ICLR 2025, filters them before fine-tuning). ``keep`` in (0, 1]; even ``keep = 1`` drops the corners of
    the spectrum beyond the Nyquist radius."""
    if x.dim() != 4:
        raise ValueError(f"low_pass: x must be an image batch (N, C, H, W), got shape {tuple(x.shape)}")
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0.0 < keep <= 1.0:
        raise ValueError(f"low_pass: keep must be a number in (0, 1], got {keep!r}")
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).abs() * 2  # 1 at the Nyquist frequency
    fx = torch.fft.rfftfreq(w, device=x.device) * 2
    mask = (fy.reshape(-1, 1) ** 2 + fx.reshape(1, -1) ** 2) <= keep ** 2
    spectrum = torch.fft.rfft2(x.double()) * mask
    return torch.fft.irfft2(spectrum, s=(h, w)).to(x.dtype)
