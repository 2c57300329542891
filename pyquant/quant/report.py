"""Per-layer quantization report: bits, ranges, SQNR vs the FP32 model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from pyquant.quant.graph import act_quantizers, quant_layers
from pyquant.quant.hooks import forward_hooks


def sqnr_db(reference: Tensor, quantized: Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - q)^2), in float64; inf when identical."""
    ref = reference.detach().double()
    noise = (ref - quantized.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


@dataclass
class LayerReport:
    name: str
    kind: str
    weight_bits: int
    input_bits: Optional[int]
    input_quantizer: Optional[str]
    weight_clip: List[float]          # [min, max] over channels of the symmetric clip scale * qmax
    input_range: Optional[List[float]]  # [lo, hi] of the input quantizer's grid
    weight_sqnr_db: float
    output_sqnr_db: Optional[float]   # this layer's output, quantized model vs FP32, on the report data


@dataclass
class QuantReport:
    """Attached to the model returned by pyquant.quantize as ``model.quant_report``."""

    recipe: str
    w_bits: int
    a_bits: int
    convention: str
    layers: List[LayerReport] = field(default_factory=list)
    activations: Dict[str, dict] = field(default_factory=dict)
    steps: List[dict] = field(default_factory=list)
    selection: Optional[object] = None  # pyquant.selection.Selection when the recipe chose among candidates

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"recipe {self.recipe}: W{self.w_bits}A{self.a_bits} ({self.convention})",
                 f"{'layer':<28}{'wbits':>6}{'abits':>6}{'w SQNR dB':>11}{'out SQNR dB':>13}  input range"]
        for r in self.layers:
            rng = "-" if r.input_range is None else f"[{r.input_range[0]:.3g}, {r.input_range[1]:.3g}]"
            out = "-" if r.output_sqnr_db is None else f"{r.output_sqnr_db:.1f}"
            lines.append(f"{r.name:<28}{r.weight_bits:>6}{str(r.input_bits or '-'):>6}"
                         f"{r.weight_sqnr_db:>11.1f}{out:>13}  {rng}")
        return "\n".join(lines)


@torch.no_grad()
def build_report(qmodel: nn.Module, fp_model: nn.Module, data: Optional[Tensor], *, recipe: str, w_bits: int,
                 a_bits: int, convention: str) -> QuantReport:
    """Per-layer report; ``fp_model`` must have the same layer names (the BN-folded FP32 copy)."""
    layers = quant_layers(qmodel)
    aqs = act_quantizers(qmodel)
    outputs_q, outputs_fp = {}, {}
    if data is not None:
        fp_modules = dict(fp_model.named_modules())
        hooks = [(m, lambda mod, a, out, n=name: outputs_q.__setitem__(n, out)) for name, m in layers.items()]
        hooks += [(fp_modules[name], lambda mod, a, out, n=name: outputs_fp.__setitem__(n, out))
                  for name in layers if name in fp_modules]
        with forward_hooks(hooks):
            qmodel(data)
            fp_model(data)
    report = QuantReport(recipe=recipe, w_bits=w_bits, a_bits=a_bits, convention=convention)
    for name, m in layers.items():
        wq = m.weight_quantizer
        clip = (wq.scale * wq.qmax).tolist()
        aq = aqs.get(m.input_quantizer_name) if m.input_quantizer_name else None
        rng = None
        if aq is not None and aq.calibrated:
            lo, hi = aq.clip_range()
            rng = [float(lo.min()), float(hi.max())]
        out_sqnr = sqnr_db(outputs_fp[name], outputs_q[name]) if name in outputs_q and name in outputs_fp else None
        report.layers.append(LayerReport(
            name=name, kind=type(m).__name__, weight_bits=wq.bits, input_bits=aq.bits if aq is not None else None,
            input_quantizer=m.input_quantizer_name, weight_clip=[min(clip), max(clip)],
            input_range=rng, weight_sqnr_db=sqnr_db(m.float_weight(), m.quantized_weight()), output_sqnr_db=out_sqnr))
    for name, q in aqs.items():
        if q.calibrated:
            lo, hi = q.clip_range()
            report.activations[name] = {"bits": q.bits, "range": [float(lo.min()), float(hi.max())],
                                        "site": getattr(qmodel, "act_quantizer_sites", {}).get(name)}
    return report
