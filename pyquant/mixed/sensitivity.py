"""ZeroQ layer sensitivity (Cai et al., "ZeroQ: A Novel Zero Shot Quantization Framework", CVPR 2020,
section 3.3, eq. 4):

    Omega_i(k) = (1/N) sum_j KL( M(theta; x_j) || M(theta~_i(k-bit); x_j) )

the KL divergence between the softmax outputs of the FP32 model and of the same model with only
layer i's weights quantized to k bits, averaged over the N (distilled) inputs x_j. Weights are
quantized per output channel, symmetric, on the signed grid [-2^(k-1), 2^(k-1) - 1], with the clip
chosen by the MSE range search (``pyquant.calib.MSEEstimator`` -> ``ops.range_search``) and applied
with ``ops.fake_quant`` (or, with ``rounding="squant"``, rounded by SQuant, ``pyquant.dfq.squant``).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pyquant import ops
from pyquant.calib import MSEEstimator

__all__ = ["layer_sensitivity", "quantizable_layers", "weight_sizes", "signed_grid", "quantize_weight"]

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def signed_grid(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of the signed ``bits``-bit grid."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


ROUNDINGS = ("nearest", "squant")


def quantize_weight(weight: Tensor, bits: int, rounding: str = "nearest") -> Tensor:
    """Per-output-channel symmetric quantization (dequantized) with the MSE-optimal clip, rounded to
    nearest (``ops.fake_quant``) or by SQuant."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    qmin, qmax = signed_grid(bits)
    w = weight.detach().float()
    scale, zero_point = MSEEstimator(axis=0, symmetric=True).observe(w).qparams(qmin, qmax)
    if rounding == "squant" and w.dim() >= 2:
        from pyquant.dfq.squant import squant_weight

        return squant_weight(w, scale, zero_point, qmin, qmax, axis=0).to(weight.dtype)
    return ops.fake_quant(w, scale, zero_point, qmin, qmax, axis=0).to(weight.dtype)


def quantizable_layers(model: nn.Module) -> list:
    """Names of the conv and linear layers (the ones whose weights get a bit-width), in model order."""
    return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def weight_sizes(model: nn.Module, layers: Optional[Iterable[str]] = None) -> Dict[str, int]:
    """Number of weight parameters of each layer (the P_i of the size constraint)."""
    modules = dict(model.named_modules())
    names = quantizable_layers(model) if layers is None else list(layers)
    return {name: int(modules[name].weight.numel()) for name in names}


def _log_probs(model: nn.Module, data: Tensor, batch_size: int) -> list:
    return [F.log_softmax(model(data[i:i + batch_size]).double(), dim=1) for i in range(0, data.shape[0], batch_size)]


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    data: Tensor,
    bits_options: Sequence[int] = (2, 4, 8),
    layers: Optional[Iterable[str]] = None,
    *,
    batch_size: int = 128,
    rounding: str = "nearest",
    progress: bool = True,
) -> Dict[str, Dict[int, float]]:
    """``{layer_name: {bits: Omega}}`` for each conv/linear layer (or the named ``layers``) and each
    bit-width in ``bits_options`` (2..8). ``data``: the inputs (e.g. ``pyquant.distill.zeroq``
    output). The model is run in eval mode and restored unchanged (weights and training flag).
    ``rounding``: ``"nearest"`` (ZeroQ) or ``"squant"`` (measure the rounding the model will use).
    KL is computed in float64 from the logits; cost: len(layers) * len(bits_options) forward passes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, Tensor):
        raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
    if data.dim() < 1 or data.shape[0] == 0:
        raise ValueError(f"data must be a non-empty batch [N, ...], got shape {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        raise ValueError("data must be finite, but it contains NaN or Inf")
    bits_options = tuple(bits_options)
    if not bits_options:
        raise ValueError("bits_options must not be empty")
    for b in bits_options:
        signed_grid(b)
    if len(set(bits_options)) != len(bits_options):
        raise ValueError(f"bits_options must not repeat a bit-width, got {bits_options}")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    modules = dict(model.named_modules())
    names = quantizable_layers(model) if layers is None else list(layers)
    if not names:
        raise ValueError("layers: the model has no conv/linear layer to quantize")
    for name in names:
        if name not in modules:
            raise ValueError(f"layers: no module named {name!r} in the model")
        if not isinstance(getattr(modules[name], "weight", None), Tensor):
            raise ValueError(f"layers: module {name!r} ({type(modules[name]).__name__}) has no weight tensor")

    was_training = model.training
    model.eval()
    try:
        reference = _log_probs(model, data, batch_size)
        result: Dict[str, Dict[int, float]] = {}
        bar = tqdm(total=len(names) * len(bits_options), desc="sensitivity", disable=not progress)
        for name in names:
            weight = modules[name].weight
            original = weight.detach().clone()
            result[name] = {}
            try:
                for bits in bits_options:
                    weight.data.copy_(quantize_weight(original, bits, rounding))
                    kl = 0.0
                    for i, log_p in enumerate(reference):
                        log_q = F.log_softmax(model(data[i * batch_size:(i + 1) * batch_size]).double(), dim=1)
                        kl += float((log_p.exp() * (log_p - log_q)).sum())
                    result[name][bits] = kl / data.shape[0]
                    bar.update(1)
            finally:
                weight.data.copy_(original)
        bar.close()
        return result
    finally:
        model.train(was_training)
