"""Per-model choice among candidate pipelines from a data-free signal (issue 13).

No single calibration pipeline wins on every network: the one ``best`` was first tuned on (CIFAR
ResNets: Lp clips, SQuant, MSE activation clips, ABN) lost to DFQ's BN-based ranges on an ImageNet
MobileNetV2. So a recipe with ``select_among`` builds its own pipeline and each named alternative on the
same synthetic data, and keeps the one whose outputs stay closest to the FP32 network's on *held-out*
synthetic samples (generated with the calibration data but never used to calibrate):

    fidelity(Q) = KL( softmax(f_FP32(x)) || softmax(f_Q(x)) ),  x in the held-out set

ZeroQ's sensitivity measure (Cai et al., CVPR 2020, eq. 5), applied to whole candidate networks instead
of single layers; for outputs that are not class scores (not 2-D), the logit mean squared error relative
to the FP32 output's power (1 / SQNR) instead. The report lists every candidate, its signal and time.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def output_divergence(fp_model: nn.Module, q_model: nn.Module, x: Tensor, batch_size: int = 256) -> float:
    """KL(FP32 || quantized) of the softmax outputs, mean over samples (2-D outputs); otherwise the
    quantization noise power relative to the FP32 output's (1 / SQNR). Lower is closer."""
    kl, noise, signal, n = 0.0, 0.0, 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        ref = fp_model(x[i:i + batch_size]).double()
        out = q_model(x[i:i + batch_size]).double()
        if ref.dim() == 2:
            kl += F.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True, reduction="sum").item()
        noise += (ref - out).pow(2).sum().item()
        signal += ref.pow(2).sum().item()
        n += ref.shape[0]
    if ref.dim() == 2:
        return kl / n
    return noise / max(signal, 1e-300)


@torch.no_grad()
def bn_mismatch(q_model: nn.Module, x: Tensor) -> float:
    """How far the quantized network's activations on ``x`` sit from the trained BatchNorm statistics:
    at every layer a BN was folded into, the per-channel mean and std of its output over the batch
    against BN's (out_mean, out_std) — ZeroQ's eq. 4 in batch mode, each channel normalised by its
    trained std — averaged over channels and layers. The trained statistics are the only trace of the
    real data a data-free method has; ``q_model`` is a pyquant.quantize result (``bn_stats``)."""
    from pyquant.quant.graph import quant_layers
    from pyquant.quant.hooks import forward_hooks

    stats = getattr(q_model, "bn_stats", None) or {}
    layers = {n: m for n, m in quant_layers(q_model).items() if n in stats}
    if not layers:
        raise ValueError("q_model has no layer with folded BatchNorm statistics (bn_stats): bn_mismatch needs them")
    moments = {}

    def record(name):
        def hook(module, args, out):
            flat = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
            moments[name] = (flat.mean(1), flat.std(1, unbiased=False))
        return hook

    with forward_hooks([(m, record(n)) for n, m in layers.items()]):
        q_model(x)
    total = 0.0
    for name, (mean, std) in moments.items():
        st = stats[name]
        target_std = st.out_std.double().clamp(min=1e-8)
        total += (((mean - st.out_mean.double()) ** 2 + (std - st.out_std.double()) ** 2) / target_std ** 2).mean().item()
    return total / len(moments)


@torch.no_grad()
def noise_divergence(fp_model: nn.Module, q_model: nn.Module, sample_shape, seed: int, samples: int = 64) -> float:
    """:func:`output_divergence` on ``samples`` standard-normal inputs (seeded): how closely the quantized network
    follows the FP32 one off the synthetic data's manifold. N(0, 1) is the per-channel input statistics a
    normalised network expects (ZeroQ's input term targets them too), but no structure of any image."""
    device = next(iter(fp_model.parameters()), torch.zeros(())).device
    gen = torch.Generator().manual_seed(seed)
    return output_divergence(fp_model, q_model, torch.randn((samples,) + tuple(sample_shape), generator=gen).to(device))


@dataclass
class ReconstructionCheck:
    """Whether a recipe's block reconstruction was kept (``quant_report.reconstruction``).

    Reconstruction fits the quantized network to the FP32 one on the synthetic samples; the held-out synthetic
    samples cannot tell whether that fit transfers, since they share the synthetic data's flaws (the digits CNN
    W3A3: KL on held-out samples 0.54 -> 0.20 while real top-1 fell 88.2 -> 80.4 %). What does tell, on the
    development networks (bench/reconstruct_decision.py, docs/pipeline.md), is the fit on inputs outside that
    manifold: on Gaussian noise reconstruction brought KL down to 0.13-0.73 of the calibration's on ResNet-32/44
    (real top-1 up to +7.5 pt) but only to 0.87-1.11 on the digits CNN (real top-1 -0.2 to -8.9 pt). So the
    reconstruction is kept when ``reconstructed < threshold * calibrated`` on that signal."""

    signal: str
    samples: int
    calibrated: float
    reconstructed: float
    threshold: float
    kept: bool

    def __str__(self) -> str:
        verdict = "kept" if self.kept else "discarded"
        return (f"reconstruction {verdict}: {self.signal} on {self.samples} N(0,1) inputs {self.calibrated:.4g} -> "
                f"{self.reconstructed:.4g} (ratio {self.reconstructed / max(self.calibrated, 1e-300):.3f}, "
                f"kept below {self.threshold:g})")


def check_reconstruction(fp_model: nn.Module, calibrated: nn.Module, reconstructed: nn.Module, sample_shape,
                         seed: int, threshold: float, samples: int = 64) -> ReconstructionCheck:
    """:class:`ReconstructionCheck` of ``reconstructed`` against the ``calibrated`` network it started from."""
    before = noise_divergence(fp_model, calibrated, sample_shape, seed, samples)
    after = noise_divergence(fp_model, reconstructed, sample_shape, seed, samples)
    kept = after == after and after < threshold * before  # a NaN divergence is never kept
    return ReconstructionCheck(signal="KL(FP32 || quantized) of the outputs", samples=samples, calibrated=before,
                               reconstructed=after, threshold=threshold, kept=bool(kept))


@dataclass
class Selection:
    """What a selecting recipe tried and kept (``quant_report.selection``)."""

    signal: str
    holdout_samples: int
    chosen: str
    candidates: List[dict] = field(default_factory=list)

    def __str__(self) -> str:
        on = ("" if "N(0,1)" in self.signal else f" on {self.holdout_samples} held-out synthetic samples")
        lines = [f"selected {self.chosen!r} by {self.signal}{on}"]
        for c in self.candidates:
            mark = "*" if c["recipe"] == self.chosen else " "
            lines.append(f" {mark} {c['recipe']:<16} {c['divergence']:.5g}  ({c['seconds']:.1f} s)")
        return "\n".join(lines)


SIGNALS = {
    "kl": "KL(FP32 || quantized) of the outputs",
    "bn_mismatch": "BN-statistic mismatch of the quantized network",
    "noise_kl": "KL(FP32 || quantized) of the outputs on 64 N(0,1) inputs",
}


def divergence(signal: str, fp_model: nn.Module, q_model: nn.Module, x: Tensor) -> float:
    """The selection signal ``signal`` (a key of SIGNALS) of ``q_model`` on ``x``; lower is better."""
    if signal == "kl":
        return output_divergence(fp_model, q_model, x)
    if signal == "bn_mismatch":
        return bn_mismatch(q_model, x)
    if signal == "noise_kl":  # the held-out samples give only the input shape and device: no synthetic image is used
        return noise_divergence(fp_model, q_model, tuple(x.shape[1:]), seed=0)
    raise ValueError(f"signal must be one of {sorted(SIGNALS)}, got {signal!r}")


def select(fp_model: nn.Module, builders, holdout: Tensor, progress: bool = True, signal: str = "kl"):
    """``builders``: (name, zero-argument function returning a quantized model) pairs, built in order;
    returns (the kept model, :class:`Selection`): the lowest ``signal`` on ``holdout``. Ties keep the
    earlier candidate; a NaN signal is never kept."""
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {sorted(SIGNALS)}, got {signal!r}")
    fp_model = fp_model.eval()
    best, best_div, rows = None, None, []
    for name, build in builders:
        t0 = time.perf_counter()
        q = build()
        div = divergence(signal, fp_model, q, holdout)
        if div != div:  # NaN: the candidate is broken, never chosen
            div = float("inf")
        rows.append({"recipe": name, "divergence": div, "seconds": time.perf_counter() - t0})
        if progress:
            print(f"[pyquant.quantize] select  {name:<24} {signal} {div:.5g}  {rows[-1]['seconds']:7.2f} s",
                  file=sys.stderr, flush=True)
        if best is None or div < best_div:
            best, best_div, chosen = q, div, name
    described = SIGNALS[signal]
    if signal == "kl":
        with torch.no_grad():
            if fp_model(holdout[:1]).dim() != 2:
                described = "output noise power / FP32 output power"
    return best, Selection(signal=described, holdout_samples=int(holdout.shape[0]), chosen=chosen, candidates=rows)
