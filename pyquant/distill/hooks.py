"""BatchNorm-statistic capture: forward pre-hooks on every BatchNorm layer that add the layer's
BN-statistic loss (ZeroQ eq. 4 and its DSG / GDFQ / Genie variants) to a list, computed by the fused
``pyquant.ops.bn_stat_loss`` op (or, as the benchmarks' baseline, by the eager reference)."""

from __future__ import annotations

import contextlib
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

from pyquant import ops
from pyquant.reference import bn_stat_loss as _reference_loss

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_layers(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers with running statistics, in module order."""
    return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.running_mean is not None]


def eager_bn_stat_loss(x, running_mean, running_var, eps=1e-5, per_sample=False, unbiased=False,
                       mean_margin=None, std_margin=None, sample_weight=None, match_var=False):
    """The eager PyTorch baseline: ``var_mean`` and the loss in the input's dtype, autograd backward."""
    return _reference_loss(x, running_mean, running_var, eps, per_sample, unbiased, mean_margin, std_margin,
                           sample_weight, match_var, dtype=None)


class BNStatHooks:
    """Context manager adding one BN-statistic loss per BatchNorm call to ``self.losses``.

    ``margins(layer_index, bn, x) -> (mean_margin, std_margin)`` and
    ``sample_weight(layer_index, x) -> Tensor | None`` customise the loss per layer (DSG);
    ``layer_scale(bn) -> float`` scales each layer's term (Genie divides by C);
    ``on_input(layer_index, bn, x)`` sees every BN input (AAC's response term).
    The model's parameters are frozen (requires_grad False) while the hooks are active.
    """

    def __init__(self, model: nn.Module, *, per_sample: bool, unbiased: bool = False,
                 backend: str = "pyquant", margins: Optional[Callable] = None,
                 sample_weight: Optional[Callable] = None, layer_scale: Optional[Callable] = None,
                 on_input: Optional[Callable] = None):
        if backend not in ("pyquant", "eager"):
            raise ValueError(f"backend must be 'pyquant' or 'eager', got {backend!r}")
        self.model = model
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError("model has no BatchNorm layer with running statistics: nothing to match")
        self.per_sample = per_sample
        self.unbiased = unbiased
        self.loss_fn = ops.bn_stat_loss if backend == "pyquant" else eager_bn_stat_loss
        self.margins = margins
        self.sample_weight = sample_weight
        self.layer_scale = layer_scale
        self.on_input = on_input
        self.losses: List[Tensor] = []
        self._handles = []
        self._frozen = []

    def _hook(self, index: int):
        def hook(module, args):
            x = args[0]
            mm, sm = self.margins(index, module, x) if self.margins else (None, None)
            w = self.sample_weight(index, x) if self.sample_weight else None
            unbiased = self.unbiased and (x[0, 0].numel() > 1 if self.per_sample else True)
            loss = self.loss_fn(x, module.running_mean, module.running_var, module.eps, self.per_sample, unbiased,
                                mm, sm, w)
            if self.layer_scale is not None:
                loss = loss * self.layer_scale(module)
            self.losses.append(loss)
            if self.on_input is not None:
                self.on_input(index, module, x)
        return hook

    def total(self) -> Tensor:
        """Sum of the collected layer losses; clears the list."""
        total = torch.stack(self.losses).sum()
        self.losses = []
        return total

    def __enter__(self):
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        self._handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        for p in self._frozen:
            p.requires_grad_(True)
        self._handles, self._frozen, self.losses = [], [], []
        return False


@torch.no_grad()
def measure_bn_loss(model: nn.Module, images: Tensor, *, per_sample: bool = False, batch_size: int = 256) -> float:
    """Sum over BN layers of the (unweighted, margin-free, biased) BN-statistic loss of ``images``,
    averaged over batches: one yardstick for every generator (batch mode by default)."""
    model.eval()
    total, batches = 0.0, 0
    with BNStatHooks(model, per_sample=per_sample) as hooks:
        for i in range(0, images.shape[0], batch_size):
            model(images[i:i + batch_size])
            total += hooks.total().item()
            batches += 1
    return total / max(batches, 1)


@contextlib.contextmanager
def seeded(seed: int):
    """Runs the block with the global RNGs seeded, restoring them afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch`` of a run seeded with ``seed`` (distinct, reproducible streams)."""
    return (seed * 1_000_003 + batch * 7919 + 12345) % (2**63 - 1)


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
