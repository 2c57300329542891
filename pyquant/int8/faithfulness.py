"""Faithfulness of a converted network: the integer codes of every activation quantizer, int8 path vs the
fake-quant network, per layer (largest difference in steps, fraction exactly equal)."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, fx, nn

from pyquant.int8.convert import activation_grid
from pyquant.quant.graph import act_quantizers
from pyquant.quant.hooks import forward_hooks


@torch.no_grad()
def fake_quant_codes(fake_quant_model: nn.Module, x: Tensor) -> Dict[str, Tensor]:
    """``{aq name: uint8-grid codes (int32)}`` of every enabled activation quantizer of the fake-quant network
    on ``x`` (its outputs are on-grid, so ``round(y / scale) + zero_point`` recovers the codes exactly)."""
    codes: Dict[str, Tensor] = {}
    hooks = []
    for name, q in act_quantizers(fake_quant_model).items():
        if not q.enabled:
            continue
        grid = activation_grid(q, f"'{name}'")

        def hook(mod, inp, out, name=name, grid=grid):
            codes[name] = torch.round(out.float() / grid.scale).to(torch.int32) + grid.zero_point
        hooks.append((q, hook))
    with forward_hooks(hooks):
        fake_quant_model(x)
    return codes


@torch.no_grad()
def int8_codes(int8_model: fx.GraphModule, x: Tensor, force: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
    """``{aq name: codes (int32)}`` of the converted network on ``x`` (the node producing each quantizer's codes).
    ``force``: reference codes (from :func:`fake_quant_codes`) that replace each quantizer's output before the
    next layers see it, so every layer is measured on exactly the fake-quant network's input (layer-wise)."""
    wanted = {v: k for k, v in int8_model.quantizer_nodes.items()}
    codes: Dict[str, Tensor] = {}

    class _Capture(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted:
                name = wanted[n.name]
                codes[name] = out.to(torch.int32)
                if force is not None:
                    out = force[name].to(torch.uint8)
            return out

    _Capture(int8_model).run(x)
    return codes


def compare_codes(fake_quant_model: nn.Module, int8_model: fx.GraphModule, x: Tensor,
                  layerwise: bool = True) -> Dict[str, Dict[str, float]]:
    """Per activation quantizer (graph order): ``max_diff`` (largest |code difference|, in steps) and
    ``equal`` (fraction of elements with identical codes), int8 path vs fake-quant network on ``x``.
    ``layerwise=True``: each int8 layer gets the fake-quant network's input codes (what one layer adds);
    ``False``: the int8 network runs on its own codes end to end (differences can accumulate)."""
    ref = fake_quant_codes(fake_quant_model, x)
    got = int8_codes(int8_model, x, force=ref if layerwise else None)
    missing = set(ref) - set(got)
    if missing:
        raise ValueError(f"compare_codes: the int8 model has no codes for {sorted(missing)}")
    report = {}
    for name, r in ref.items():
        d = (got[name] - r).abs()
        report[name] = {"max_diff": int(d.max()), "equal": float((d == 0).double().mean()), "numel": r.numel()}
    return report
