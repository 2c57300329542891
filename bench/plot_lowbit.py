"""Bar chart of the low-bit ablation (issue 11): top-1 per component on the reported networks, from the results
JSON of bench/quantize_table.py (mean and std over seeds, FP32 as a line).

    python bench/plot_lowbit.py --out docs/lowbit_ablation.png
"""

from __future__ import annotations

import argparse
import json
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# best_calibration: best with reconstruct=None on the same data (quantize_table.py --calibration-only)
LABELS = {"best_calibration": "calibration only (best, reconstruct=None)",
          "best": "+ block reconstruction (best: below 4 bit)",
          "best_rb5": "+ block reconstruction at W4A8/W4A4 (reconstruct_below_bits=5, opt-in)",
          "best@input8": "best, network input at 8 bit (input_bits=8; the papers' input convention)"}
INPUT8 = "all layers quantized, network input at 8 bit"


def cells(results):
    """{(model, config): {recipe: [top-1 per seed]}} of every 'all layers' run; runs with the network input at
    8 bit are the bar '<recipe>@input8'."""
    out = {}
    for key, run in results["runs"].items():
        model, recipe, config, convention, _ = key.split("|")
        if convention in ("all layers quantized", INPUT8):
            label = recipe + ("@input8" if convention == INPUT8 else "")
            out.setdefault((model, config), {}).setdefault(label, []).append(run["top1"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", default=["bench/results/quantize_table_lowbit.json",
                                                   "bench/results/quantize_table_lowbit_resnet56.json",
                                                   "bench/results/quantize_table_input8.json",
                                                   "bench/results/quantize_table_input8_resnet56.json"])
    p.add_argument("--out", default="docs/lowbit_ablation.png")
    args = p.parse_args(argv)
    results = {"runs": {}, "fp32": {}}
    for path in args.results:
        part = json.load(open(path))
        results["runs"].update(part["runs"])
        results["fp32"].update(part["fp32"])
    groups = sorted(cells(results).items())
    recipes = [r for r in LABELS if any(r in g for _, g in groups)]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 4.4))
    width = 0.8 / max(1, len(recipes))
    for i, recipe in enumerate(recipes):
        xs, means, stds = [], [], []
        for j, (_, g) in enumerate(groups):
            if recipe in g:
                xs.append(j + (i - (len(recipes) - 1) / 2) * width)
                means.append(statistics.mean(g[recipe]))
                stds.append(statistics.stdev(g[recipe]) if len(g[recipe]) > 1 else 0.0)
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=LABELS[recipe])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    for j, ((model, _), _) in enumerate(groups):
        fp = results["fp32"][model]
        ax.hlines(fp, j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1)
    ax.set_xticks(range(len(groups)), [f"{m}\n{c}" for (m, c), _ in groups])
    ax.set_ylabel("top-1 (%), 10,000 test images")
    ax.set_title("every weight layer quantized; dashed: FP32; mean ± std over seeds", fontsize=9)
    lowest = min(min(v) for _, g in groups for v in g.values())
    ax.set_ylim(max(0.0, 10 * (lowest // 10) - 5), None)  # the differences are a few points: no bars from 0
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
