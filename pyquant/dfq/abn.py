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
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from pyquant.quant.graph import quant_layers


@torch.no_grad()
def adaptive_bn(qmodel: nn.Module, bn_stats: Dict, data: Tensor, match_std: bool = True,
                max_ratio: float = 4.0) -> Dict[str, float]:
    """In place on a prepared model with quantized weights (per-channel, axis 0). Returns
    {layer: mean |log std ratio|}. ``max_ratio`` bounds the std correction (guards dead channels)."""
    layers = {n: m for n, m in quant_layers(qmodel).items() if n in bn_stats}
    done = {}

    def hook_for(name):
        st = bn_stats[name]

        def hook(mod, args, out):
            dims = [d for d in range(out.dim()) if d != 1]
            var, mean = torch.var_mean(out.double(), dim=dims, unbiased=False)
            shape = (1, -1) + (1,) * (out.dim() - 2)
            if match_std:
                std = var.sqrt()
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

    handles = [m.register_forward_hook(hook_for(n)) for n, m in layers.items()]
    try:
        qmodel(data)
    finally:
        for h in handles:
            h.remove()
    return done
