"""Bias correction (Nagel et al., ICCV 2019, section 4.2, eq. 15-19): weight quantization shifts the
expected output of a layer by ``E[y~] - E[y] = (W~ - W) E[x]``; subtracting it from the bias removes
the shift.

- :func:`analytic_bias_correction`: E[x] from the folded BN statistics propagated through ReLU /
  clipped-ReLU / residual adds (:mod:`pyquant.dfq.moments`); data-free.
- :func:`empirical_bias_correction`: per output channel, the mean output of the FP32 (folded) network
  minus that of the quantized network on the given (synthetic) data, layer after layer in one
  forward pass so that each correction sees the already-corrected layers before it.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor, nn

from pyquant.dfq.moments import Moments, expected_layer_inputs, weight_times_input
from pyquant.quant.graph import quant_layers, trace
from pyquant.quant.hooks import forward_hooks


def _channel_mean(out: Tensor) -> Tensor:
    dims = [d for d in range(out.dim()) if d != 1]
    return out.double().mean(dim=dims)


@torch.no_grad()
def analytic_bias_correction(qmodel: nn.Module, bn_stats: Dict, input_moments: Moments = None) -> Dict[str, float]:
    """In place on a prepared model with quantized weights; returns {layer: max |correction|} for the
    layers whose expected input is known (the others are left as they are)."""
    gm = trace(qmodel)
    means = expected_layer_inputs(gm, bn_stats, input_moments)
    done = {}
    for name, m in quant_layers(gm).items():
        if name not in means or not m.weight_quantizer.enabled:
            continue
        eps = (m.quantized_weight() - m.float_weight()).double()
        delta = weight_times_input(eps, getattr(m, "groups", 1), means[name].double())
        m.ensure_bias().sub_(delta.to(m.bias.dtype))
        done[name] = float(delta.abs().max())
    return done


@torch.no_grad()
def empirical_bias_correction(qmodel: nn.Module, fp_model: nn.Module, data: Tensor) -> Dict[str, float]:
    """In place: corrects every quantized layer's bias so that its mean output on ``data`` (one
    batch) matches the FP32 model's (same layer names). Returns {layer: max |correction|}."""
    fp_modules = dict(fp_model.named_modules())
    layers = {n: m for n, m in quant_layers(qmodel).items() if n in fp_modules}
    targets = {}
    with forward_hooks((fp_modules[n], lambda mod, a, out, n=n: targets.__setitem__(n, _channel_mean(out)))
                       for n in layers):
        fp_model(data)
    done = {}

    def correct(name):
        def hook(mod, args, out):
            delta = (targets[name] - _channel_mean(out)).float()
            mod.ensure_bias().add_(delta)
            done[name] = float(delta.abs().max())
            return out + delta.reshape((1, -1) + (1,) * (out.dim() - 2))
        return hook

    with forward_hooks((m, correct(n)) for n, m in layers.items()):
        qmodel(data)
    return done
