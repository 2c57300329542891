"""Where does a recipe lose on a network? Per-layer output SQNR on real images, as a plot (issue 13).

Quantizes a development network with several recipes on the same ZeroQ data and measures, on real images,
each quantized layer's output against the same layer of the recipe's own FP32 reference (the BN-folded
network after the recipe's structural steps: ReLU6->ReLU, CLE and bias absorption change the FP32
per-channel scales, so every recipe is compared with its own reference). Writes a PNG with one line per
recipe and a JSON of the numbers.

    python bench/diagnose_layers.py --model mobilenet_v2_proxy --config W6A6 --out docs/mobilenet_layers
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant import dfq  # noqa: E402
from pyquant.data import find_shared_data  # noqa: E402
from pyquant.quant import graph as qgraph  # noqa: E402
from pyquant.quant.report import build_report  # noqa: E402
from quantize_table import CONFIGS  # noqa: E402
from selection_study import CANDIDATES, cached_data, load_model  # noqa: E402


def fp_reference(model, recipe):
    """The FP32 network exactly as pyquant.quantize prepares it before quantizing (its fp_ref)."""
    fp = copy.deepcopy(model).eval()
    if recipe.relu6_to_relu:
        qgraph.replace_relu6(fp)
    folded, bn_stats = qgraph.fold_bn(qgraph.trace(fp))
    if recipe.cle:
        dfq.cross_layer_equalization(folded, bn_stats)
    if recipe.absorb_high_bias:
        dfq.absorb_high_bias(folded, bn_stats)
    return folded


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2_proxy")
    p.add_argument("--config", default="W6A6", choices=list(CONFIGS))
    p.add_argument("--candidates", nargs="+", default=["lp_squant_abn", "lp_squant", "zeroq", "dfq"])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "pyquant", "selection"))
    p.add_argument("--out", default="docs/mobilenet_layers")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    model, images, _ = load_model(args.model, data_dir)
    data = cached_data(model, args.model, args.seed, 128, 32, 200, args.cache_dir)["x"][:128]
    real = images[:args.images]
    w, a = CONFIGS[args.config]
    curves = {}
    for cand in args.candidates:
        name, overrides = CANDIDATES[cand]
        recipe = pyquant.recipes.get_recipe(name).replace(**overrides)
        q = pyquant.quantize(model, recipe, w_bits=w, a_bits=a, input_shape=(3, 32, 32), seed=args.seed, data=data,
                             progress=False)
        report = build_report(q, fp_reference(model, recipe), real, recipe=cand, w_bits=w, a_bits=a, convention="")
        curves[cand] = {r.name: r.output_sqnr_db for r in report.layers}
        print(cand, " ".join(f"{v:.1f}" for v in curves[cand].values()))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"model": args.model, "config": args.config, "images": args.images, "sqnr_db": curves}, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    for cand, c in curves.items():
        ax.plot(range(len(c)), list(c.values()), marker=".", label=cand)
    names = list(next(iter(curves.values())))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("layer output SQNR vs FP32 (dB)")
    ax.set_title(f"{args.model} {args.config}: per-layer output SQNR on {args.images} real images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)
    print("wrote", args.out + ".png")


if __name__ == "__main__":
    main()
