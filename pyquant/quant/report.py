"""Per-layer quantization report: bits, ranges, SQNR vs the FP32 model; :meth:`QuantReport.write` turns it into a
Markdown file with PNG plots (per-layer SQNR and ranges, accuracy, the mixed-precision Pareto frontier)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional

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
    # pyquant.selection.ReconstructionCheck when the recipe's reconstruction was checked (kept or discarded)
    reconstruction: Optional[object] = None
    abn_gate: Optional[object] = None  # pyquant.dfq.abn.AbnGate when the recipe gated ABN on the data's fit
    # when mixed precision ran: {"avg_bits", "budget_bits", "sensitivity": {layer: {bits: Omega}},
    # "sizes": {layer: weight count}} (pyquant.recipes._mixed_precision)
    mixed_precision: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, directory: str, *, accuracy: Optional[Mapping[str, float]] = None, title: Optional[str] = None,
              notes: Optional[List[str]] = None, extra_steps: Optional[List[dict]] = None,
              mixed_precision: Optional[Mapping] = None) -> str:
        """Writes ``report.md``, ``report.json`` and ``layers.png`` (per-layer SQNR, bits and ranges) into
        ``directory`` (created), plus ``accuracy.png`` when ``accuracy`` is given ({"FP32": 91.2, "fake-quant": ...,
        top-1 in percent}), and when mixed precision ran (``self.mixed_precision``, set by pyquant.quantize) or
        ``mixed_precision`` ({"sensitivity": {layer: {bits: value}}, "sizes": {layer: weight count}}, as for
        :func:`pyquant.mixed.pareto_frontier`) is given: ``frontier.png`` and tables of the per-layer sensitivity
        and the Pareto frontier.
        ``extra_steps``: wall times of steps outside pyquant.quantize ({"step", "seconds", "detail"}), listed after
        its own. Returns the path of ``report.md``."""
        return write_report(self, directory, accuracy=accuracy, title=title, notes=notes, extra_steps=extra_steps,
                            mixed_precision=mixed_precision)

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


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _plot_layers(report: QuantReport, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in report.layers]
    idx = list(range(len(names)))
    finite = [r.weight_sqnr_db if math.isfinite(r.weight_sqnr_db) else None for r in report.layers]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(names) + 2), 6.5), sharex=True)
    ax.bar([i - 0.2 for i in idx], [v or 0 for v in finite], 0.4, label="weight SQNR", color="tab:blue")
    out = [r.output_sqnr_db for r in report.layers]
    ax.bar([i + 0.2 for i in idx], [v if v is not None and math.isfinite(v) else 0 for v in out], 0.4,
           label="layer-output SQNR (vs FP32)", color="tab:orange")
    for i, r in enumerate(report.layers):
        ax.annotate(f"W{r.weight_bits}" + (f"A{r.input_bits}" if r.input_bits else ""), (i, 0), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7, rotation=90, color="white")
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(f"{report.recipe}: W{report.w_bits}A{report.a_bits} ({report.convention})")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    lo = [r.input_range[0] if r.input_range else 0.0 for r in report.layers]
    hi = [r.input_range[1] if r.input_range else 0.0 for r in report.layers]
    ax2.vlines(idx, lo, hi, color="tab:green", lw=6, label="input quantizer range [lo, hi]")
    ax2.plot(idx, [r.weight_clip[1] for r in report.layers], "k_", ms=12, mew=2, label="largest weight clip")
    ax2.set_ylabel("range")
    ax2.set_yscale("symlog", linthresh=1.0)
    ax2.legend(fontsize=8)
    ax2.grid(True, axis="y", alpha=0.3)
    ax2.set_xticks(idx)
    ax2.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_accuracy(accuracy: Mapping[str, float], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels, values = list(accuracy), [float(v) for v in accuracy.values()]
    bars = ax.bar(labels, values, color=["tab:gray", "tab:blue", "tab:orange", "tab:green"][:len(labels)])
    for b, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), xytext=(0, 2), textcoords="offset points",
                    ha="center", fontsize=8)
    ax.set_ylim(max(0.0, min(values) - 10), 100)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FRONTIER_TABLE_ROWS = 16  # the frontier of a deep network has hundreds of points: the table shows a spread


def _mixed_precision_section(report: QuantReport, mixed: Mapping, directory: str):
    """Markdown (per-layer sensitivity, the Pareto frontier as a table and ``frontier.png``) and the frontier as
    ``[{"size_bits", "avg_bits", "sensitivity"}]`` for report.json."""
    from pyquant.mixed import pareto_frontier
    from pyquant.mixed.plot import plot_frontier

    sensitivity, sizes = mixed["sensitivity"], mixed["sizes"]
    frontier = pareto_frontier(sensitivity, sizes)
    n_weights = sum(sizes.values())
    used = {r.name: r.weight_bits for r in report.layers if r.name in sizes}
    # first_last_bits may override the allocation with a width that was not measured: no point to mark then
    measured = all(b in sensitivity[n] for n, b in used.items()) and len(used) == len(sizes)
    size = sum(sizes[n] * b for n, b in used.items())
    total = sum(sensitivity[n][b] for n, b in used.items()) if measured else None
    marks = {"used": (size, total, used)} if measured else None
    plot_frontier(frontier, os.path.join(directory, "frontier.png"), chosen=marks,
                  title=f"{report.recipe}: mixed-precision Pareto frontier")
    options = sorted({b for s in sensitivity.values() for b in s})
    md = ["## Mixed precision", "",
          f"ZeroQ's allocation: average weight bits at most {float(mixed.get('avg_bits', size / n_weights)):g}; "
          f"{len(frontier)} Pareto-optimal allocations of {len(sizes)} layers. The model uses "
          f"{size / n_weights:.3f} bits per weight ({size / 8 / 1024:.1f} KiB)"
          + (f", total sensitivity {total:.4g}." if measured else
             " (some layers at a width the allocation did not measure, e.g. first_last_bits)."), "",
          "Per-layer sensitivity Omega_i(k): KL divergence of the outputs with only this layer's weights at k bit "
          "(ZeroQ eq. 4).", "",
          "| layer | weights | " + " | ".join(f"Omega({b} bit)" for b in options) + " | bits used |",
          "|---|---:|" + "---:|" * len(options) + "---:|"]
    for name in sizes:
        md.append(f"| `{name}` | {sizes[name]} | " + " | ".join(_fmt_g(sensitivity[name].get(b)) for b in options)
                  + f" | {used.get(name, '-')} |")
    step = max(1, -(-len(frontier) // FRONTIER_TABLE_ROWS))
    shown = sorted(set(range(0, len(frontier), step)) | {len(frontier) - 1})
    md += ["", f"Pareto frontier ({len(shown)} of {len(frontier)} points):", "",
           "| weight size (KiB) | bits per weight | total sensitivity |", "|---:|---:|---:|"]
    md += [f"| {frontier[i][0] / 8 / 1024:.2f} | {frontier[i][0] / n_weights:.3f} | {_fmt_g(frontier[i][1])} |"
           for i in shown]
    md += ["", "![Pareto frontier](frontier.png)", ""]
    rows = [{"size_bits": p[0], "avg_bits": p[0] / n_weights, "sensitivity": p[1]} for p in frontier]
    return md, rows


def _fmt_g(v) -> str:
    return "-" if v is None else f"{float(v):.4g}"


def write_report(report: QuantReport, directory: str, *, accuracy: Optional[Mapping[str, float]] = None,
                 title: Optional[str] = None, notes: Optional[List[str]] = None,
                 extra_steps: Optional[List[dict]] = None, mixed_precision: Optional[Mapping] = None) -> str:
    """See :meth:`QuantReport.write`."""
    if not isinstance(report, QuantReport):
        raise TypeError(f"report must be a QuantReport, got {type(report).__name__}")
    os.makedirs(directory, exist_ok=True)
    title = title or f"pyquant report: {report.recipe}, W{report.w_bits}A{report.a_bits}"
    md = [f"# {title}", "", f"Recipe `{report.recipe}`, weights {report.w_bits} bit, activations {report.a_bits} bit "
          f"({report.convention}).", ""]
    md += [f"- {n}" for n in notes or []] + ([""] if notes else [])
    decisions = [str(d) for d in (report.abn_gate, report.selection, report.reconstruction) if d is not None]
    if decisions:  # what a per-model choice picked, and on what evidence
        md += ["## Per-model choices", "", "```text", *decisions, "```", ""]
    if accuracy:
        _plot_accuracy(accuracy, os.path.join(directory, "accuracy.png"), title)
        md += ["## Accuracy", "", "| model | top-1 (%) |", "|---|---:|"]
        md += [f"| {k} | {float(v):.2f} |" for k, v in accuracy.items()]
        md += ["", "![accuracy](accuracy.png)", ""]
    _plot_layers(report, os.path.join(directory, "layers.png"))
    md += ["## Layers", "", "SQNR = 10 log10(signal / quantization noise), in dB; layer outputs are compared with the "
           "BN-folded FP32 network on the calibration data.", "",
           "| layer | kind | W bits | A bits | weight clip (min..max over channels) | input range | weight SQNR dB | "
           "output SQNR dB |", "|---|---|---:|---:|---|---|---:|---:|"]
    for r in report.layers:
        rng = "-" if r.input_range is None else f"[{r.input_range[0]:.4g}, {r.input_range[1]:.4g}]"
        md.append(f"| `{r.name}` | {r.kind} | {r.weight_bits} | {r.input_bits or '-'} | "
                  f"{r.weight_clip[0]:.4g}..{r.weight_clip[1]:.4g} | {rng} | {_fmt(r.weight_sqnr_db, 1)} | "
                  f"{_fmt(r.output_sqnr_db, 1)} |")
    md += ["", "![per-layer SQNR and ranges](layers.png)", ""]
    if report.activations:
        md += ["## Activation quantizers", "", "| quantizer | site | bits | range |", "|---|---|---:|---|"]
        md += [f"| `{n}` | {a.get('site') or '-'} | {a['bits']} | [{a['range'][0]:.4g}, {a['range'][1]:.4g}] |"
               for n, a in report.activations.items()]
        md.append("")
    mixed = mixed_precision or report.mixed_precision
    frontier_rows = None
    if mixed:
        section, frontier_rows = _mixed_precision_section(report, mixed, directory)
        md += section
    steps = list(report.steps) + list(extra_steps or [])
    if steps:
        md += ["## Wall time per step", "", "| step | seconds | detail |", "|---|---:|---|"]
        md += [f"| {s['step']} | {s['seconds']:.2f} | {s.get('detail', '')} |" for s in steps]
        md += ["", f"Total: {sum(s['seconds'] for s in steps):.1f} s.", ""]
    path = os.path.join(directory, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    data = report.to_dict()
    data["steps"] = steps
    if accuracy:
        data["accuracy"] = dict(accuracy)
    if frontier_rows is not None:
        data["mixed_precision"] = {**{k: v for k, v in mixed.items()}, "frontier": frontier_rows}
    with open(os.path.join(directory, "report.json"), "w") as f:
        json.dump(data, f, indent=1, default=float)
    return path
