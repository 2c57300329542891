"""ABN: adaptive BatchNorm re-estimation on the quantized network (He et al., "Data-Free Quantization
with Accurate Activation Clipping and Adaptive Batch Normalization", arXiv 2204.04215 / NPL 2023).

Weight quantization changes the statistics of each convolution's output, so the BatchNorm that
follows normalises with stale statistics. ABN recomputes them on synthetic data by running the
quantized network (BN in train mode, layers in order) and then folds. We work on the folded form,
which is equivalent: a folded layer's output should have per-channel mean beta and standard deviation
|gamma| (the BN's affine output); with the quantized network's measured mean m and std s on the data,
re-estimated BN statistics give ``y' = (y - m) |gamma| / s + beta``. For per-channel weight
quantization this is exact in the quantized model: the weight quantizer's scale is multiplied by
``|gamma| / s`` (the integer weights are unchanged) and the bias becomes ``(b - m) |gamma| / s + beta``.
Layers are corrected in one forward pass in topological order, as train-mode BN would.

Target statistics (``bn_weight``). ABN's target is the trained BN statistics (``bn_weight=1``, the
paper). On synthetic data that only approximately reproduces those statistics, that target also
"corrects" the generator's own mismatch, which compounds over deep networks (ResNet-56: -2 pt at W8A8
where the quantization shift is negligible). ``bn_weight=0`` targets instead the FP32 network's
statistics on the same data (``fp_model``), which corrects only the shift quantization causes;
``0 < bn_weight < 1`` shrinks between the two: mean ``(1-w) mu_fp + w beta``, std
``s_fp^(1-w) |gamma|^w``. docs/pipeline.md measures the three on ResNet-20/56.

Bounded pull (``max_pull``). The part of the target beyond the FP32 network's own statistics on the data
(the pull towards the trained statistics) can be bounded per channel: ``|log(target std / s_fp)|`` and
``|target mean - mu_fp| / |gamma|`` at most ``max_pull``. Where the synthetic data reproduce a channel's trained
statistics (most channels of the CIFAR ResNets) the bound changes nothing; where they do not (a MobileNetV2's
late depthwise layers), the trained statistics pull the quantized network away from what the FP32 network
computes. On the MobileNetV2 proxy the bound wins back 2.6-3.7 of the 5-11 pt ABN costs (docs/transfer.md).

When to run it at all (:func:`data_misfit`, :class:`AbnGate`). ABN re-estimates statistics on the synthetic data,
so it can only be as right as those data are representative of what the trained statistics describe. Where the
FP32 network itself, run on the data, sits far from its own trained statistics, the data are not such a sample,
and any target built on them moves the network somewhere untested: the median over BN layers of the mean
|log(std on the data / trained std)| is 0.055-0.073 on the CIFAR ResNets (ABN worth up to 13 pt) and 0.145 on the
MobileNetV2 proxy, where ABN loses at every target (docs/transfer.md, "Gating ABN on the data's fit").
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from pyquant.quant.graph import BN_LAYERS, quant_layers
from pyquant.quant.hooks import forward_hooks


def check_bn_weight(value, who: str) -> None:
    """``value`` must be a real number in [0, 1] (bool excluded); the error names ``who``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{who} must be a number in [0, 1], got {value!r}")


def _channel_moments(out: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel (dim 1) mean and population std of a layer output, in float64."""
    var, mean = torch.var_mean(out.double(), dim=[d for d in range(out.dim()) if d != 1], unbiased=False)
    return mean, var.sqrt()


def _output_moments(model: nn.Module, names, data: Tensor) -> Dict[str, tuple]:
    """{layer: (per-channel mean, std)} of each named layer's output on ``data`` (float64)."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"adaptive_bn: fp_model has no layer(s) {missing}")
    moments = {}

    def hook_for(name):
        def hook(mod, args, out):
            moments[name] = _channel_moments(out)
        return hook

    with forward_hooks((modules[n], hook_for(n)) for n in names):
        model(data)
    return moments


@torch.no_grad()
def data_misfit(model: nn.Module, data: Tensor, batch_size: int = 64) -> float:
    """How far the FP32 ``model`` (BatchNorm layers not folded), run on ``data`` in eval mode, sits from its own
    trained BN statistics: the median over BN layers of the mean over channels of ``|log(std / sqrt(running_var
    + eps))|`` of each BN layer's input (= its output's std against ``|gamma|``), the std over all of ``data``.
    0 when the data reproduce the trained standard deviations exactly."""
    bns = [m for m in model.modules() if isinstance(m, BN_LAYERS) and m.running_var is not None]
    if not bns:
        raise ValueError("data_misfit: the model has no BatchNorm layer with running statistics")
    if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 2:
        raise ValueError("data_misfit: data must be a batch of at least 2 samples")
    sums = {}  # BN layer -> [count, per-channel sum, per-channel sum of squares], float64

    def hook(mod, args):
        x = args[0].double().transpose(0, 1).reshape(args[0].shape[1], -1)
        acc = sums.setdefault(mod, [0, 0.0, 0.0])
        acc[0] += x.shape[1]
        acc[1] = acc[1] + x.sum(dim=1)
        acc[2] = acc[2] + x.pow(2).sum(dim=1)

    was_training = model.training
    model.eval()
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    try:
        for chunk in data.split(batch_size):
            model(chunk)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_layer = []
    for mod, (n, s1, s2) in sums.items():
        var = (s2 / n - (s1 / n).pow(2)).clamp(min=0.0)
        trained = mod.running_var.double() + mod.eps
        per_layer.append(float(0.5 * (var.clamp(min=1e-24) / trained).log().abs().mean()))
    return statistics.median(per_layer)


@dataclasses.dataclass
class AbnGate:
    """The decision to run ABN or not on these data (``quant_report.abn_gate``)."""

    misfit: float
    threshold: float
    ran: bool

    def __str__(self) -> str:
        verdict = "ABN ran" if self.ran else "ABN skipped"
        return (f"{verdict}: the FP32 network on the synthetic data is {self.misfit:.3f} from its trained BN "
                f"statistics (median over layers of mean |log std ratio|; ABN only at or below {self.threshold:g})")


def check_max_pull(value, who: str) -> None:
    """``value`` must be None or a positive finite number (bool excluded); the error names ``who``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
        raise ValueError(f"{who} must be None or a positive finite number, got {value!r}")


def blended_targets(bn_stats: Dict, fp_moments: Dict[str, tuple], bn_weight: float,
                    max_pull: Optional[float] = None) -> Dict:
    """bn_stats with each layer's (out_mean, out_std) moved from the FP32 moments on the data towards
    the trained BN statistics by ``bn_weight`` (linear in the mean, geometric in the std); with ``max_pull``,
    each channel's move bounded (log std ratio, mean shift in trained stds; see the module doc)."""
    out = dict(bn_stats)
    for name, (mean, std) in fp_moments.items():
        st, w = bn_stats[name], bn_weight
        fp_std = std.clamp(min=1e-12)
        log_pull = w * (st.out_std.double().clamp(min=1e-12).log() - fp_std.log())
        mean_pull = w * (st.out_mean.double() - mean)
        if max_pull is not None:
            scale = st.out_std.double().abs().clamp(min=1e-12)
            log_pull = log_pull.clamp(-max_pull, max_pull)
            mean_pull = torch.clamp(mean_pull, -max_pull * scale, max_pull * scale)
        out[name] = dataclasses.replace(st, out_mean=(mean + mean_pull).to(st.out_mean.dtype),
                                        out_std=(fp_std * log_pull.exp()).to(st.out_std.dtype))
    return out


@torch.no_grad()
def adaptive_bn(qmodel: nn.Module, bn_stats: Dict, data: Tensor, match_std: bool = True,
                max_ratio: float = 4.0, bn_weight: float = 1.0,
                fp_model: Optional[nn.Module] = None, max_pull: Optional[float] = None) -> Dict[str, float]:
    """In place on a prepared model with quantized weights (per-channel, axis 0). Returns
    {layer: mean |log std ratio|}. ``max_ratio`` bounds the std correction (guards dead channels).
    ``bn_weight`` in [0, 1], ``max_pull`` (None or > 0) and ``fp_model`` (the FP32 folded model, same layer
    names): the target statistics, see the module doc; bn_weight 1 without max_pull needs no ``fp_model``."""
    check_bn_weight(bn_weight, "adaptive_bn: bn_weight")
    check_max_pull(max_pull, "adaptive_bn: max_pull")
    layers = {n: m for n, m in quant_layers(qmodel).items() if n in bn_stats}
    if bn_weight < 1.0 or max_pull is not None:
        if fp_model is None:
            raise ValueError("adaptive_bn: bn_weight < 1 or max_pull needs fp_model (the FP32 model the targets "
                             "are measured on)")
        bn_stats = blended_targets(bn_stats, _output_moments(fp_model, list(layers), data), float(bn_weight),
                                   None if max_pull is None else float(max_pull))
    done = {}

    def hook_for(name):
        st = bn_stats[name]

        def hook(mod, args, out):
            mean, std = _channel_moments(out)
            shape = (1, -1) + (1,) * (out.dim() - 2)
            if match_std:
                ratio = torch.where(std > 1e-8, st.out_std.double() / std.clamp(min=1e-12), torch.ones_like(std))
                ratio = ratio.clamp(1.0 / max_ratio, max_ratio)
            else:
                ratio = torch.ones_like(mean)
            bias = mod.ensure_bias()
            new_bias = (bias.double() - mean) * ratio + st.out_mean.double()
            new_out = (out.double() - mean.reshape(shape)) * ratio.reshape(shape) + st.out_mean.double().reshape(shape)
            wq = mod.weight_quantizer
            if match_std:
                if wq.axis != 0 or wq.scale.numel() != ratio.numel():
                    raise ValueError(f"adaptive_bn: layer '{name}' needs per-channel (axis 0) weight quantization")
                per_out = ratio.reshape((-1,) + (1,) * (mod.weight.dim() - 1)).float()
                mod.weight.mul_(per_out)
                if getattr(mod, "weight_fp", None) is not None:  # SQuant-rounded layers keep their FP32 weight
                    mod.weight_fp.mul_(per_out)
                wq.scale = (wq.scale.double() * ratio).float()
            bias.copy_(new_bias.float())
            done[name] = float(ratio.log().abs().mean())
            return new_out.float()
        return hook

    with forward_hooks((m, hook_for(n)) for n, m in layers.items()):
        qmodel(data)
    return done
