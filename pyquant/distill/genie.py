"""Genie-D distillation (Jeon et al., "Genie: Show Me the Data for Quantization", CVPR 2023,
section 3.1, eq. 2-4).

For each batch a fresh small generator G and per-sample latents z are optimised jointly: the images
are ``G(z)``, so G contributes a smoothness prior shared by the batch and z per-sample freedom. Loss:
batch-statistic BN matching divided by the channel count,
``sum_l (||mu_l~ - mu_l||^2 + ||sigma_l~ - sigma_l||^2) / C_l``, plus the input term. "Swing
convolution": while distilling, every strided convolution of the teacher sees its input reflect-padded
by 1 pixel and cropped back at a random offset (jitter against aliasing of the strided sampling).
Optimisers as in the paper's code: Adam on z (lr 0.1, ReduceLROnPlateau patience 100) and Adam on G
(lr 0.01, ExponentialLR gamma 0.95 every 100 iterations).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyquant._guards import any_grad_mode
from pyquant.distill._loop import check_common, iterate, own_input_term, run_batches
from pyquant.distill.hooks import BNStatHooks, model_device


class GenieGenerator(nn.Module):
    """Linear(latent -> 128 (s/4)^2) -> BN -> x2 -> conv3x3(64) -> BN -> LReLU -> x2 -> conv3x3(C) -> tanh
    -> BN(affine=False), as in Genie's generator."""

    def __init__(self, latent_dim: int, shape: Sequence[int]):
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"genie: input height and width must be multiples of 4, got {h}x{w}")
        self.h0, self.w0 = h // 4, w // 4
        self.fc = nn.Linear(latent_dim, 128 * self.h0 * self.w0)
        self.bn0 = nn.BatchNorm2d(128)
        self.conv1 = nn.Conv2d(128, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, c, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(c, affine=False)

    def forward(self, z):
        x = self.bn0(self.fc(z).view(z.shape[0], 128, self.h0, self.w0))
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
        x = F.interpolate(x, scale_factor=2)
        return self.bn_out(torch.tanh(self.conv2(x)))


@contextlib.contextmanager
def swing_convolutions(model: nn.Module):
    """Genie's swing convolution on every strided Conv2d of ``model`` while active."""

    def hook(module, args):
        x = args[0]
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        i, j = torch.randint(0, 3, (2,)).tolist()
        return (padded[..., i:i + h, j:j + w],)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d) and max(m.stride) > 1]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@any_grad_mode
def genie(
    model: nn.Module,
    num_samples: int,
    input_shape: Sequence[int],
    *,
    batch_size: int = 128,
    iterations: int = 4000,
    seed: int = 0,
    latent_dim: int = 256,
    lr_g: float = 0.01,
    lr_z: float = 0.1,
    swing: bool = True,
    label_weight: float = 0.0,
    num_classes: int = 0,
    backend: str = "pyquant",
    progress: bool = True,
) -> Tensor:
    """``num_samples`` Genie images for ``model``: a fresh generator and latents per batch.
    ``label_weight > 0`` adds cross-entropy on random labels (optional)."""
    shape = check_common(num_samples, input_shape, batch_size, iterations, model)
    if len(shape) != 3:
        raise ValueError(f"genie: input_shape must be (C, H, W), got {input_shape!r}")
    device = model_device(model)
    was_training = model.training
    model.eval()

    def make_batch(n: int, b: int) -> Tensor:
        gen = GenieGenerator(latent_dim, shape).to(device).train()
        z = torch.randn(n, latent_dim, device=device).requires_grad_()
        labels = torch.randint(0, max(num_classes, 1), (n,), device=device) if label_weight > 0 else None
        opt_z = torch.optim.Adam([z], lr=lr_z)
        opt_g = torch.optim.Adam(gen.parameters(), lr=lr_g)
        sched_z = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_z, patience=100, min_lr=1e-4)
        sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=0.95)
        swing_ctx = swing_convolutions(model) if swing else contextlib.nullcontext()
        with BNStatHooks(model, per_sample=False, backend=backend,
                         layer_scale=lambda bn: 1.0 / bn.num_features) as hooks, swing_ctx:
            bar = iterate(iterations, f"genie batch {b}", progress)
            for it in bar:
                opt_z.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                x = gen(z)
                out = model(x)
                loss = hooks.total() + own_input_term(x, per_sample=False)
                if labels is not None:
                    loss = loss + label_weight * F.cross_entropy(out, labels)
                loss.backward()
                opt_z.step()
                opt_g.step()
                value = loss.item()
                sched_z.step(value)
                if (it + 1) % 100 == 0:
                    sched_g.step()
                if it % 20 == 0:
                    bar.set_postfix(loss=f"{value:.4f}")
        with torch.no_grad():
            return gen(z)

    try:
        return run_batches(num_samples, batch_size, seed, make_batch, "genie", progress)
    finally:
        model.train(was_training)
