"""ABN's target statistics on the development networks (issue 13, docs/transfer.md).

Per folded-BN layer: how far the FP32 network's output statistics on the ZeroQ data (the same cached 128 + 32
samples as bench/selection_study.py) and on 1,000 real images sit from the trained BN statistics (mean over
channels of |log(std / trained std)| and |mean - trained mean| / trained std). Then `best`'s own calibration
(no selection, no reconstruction) with ABN's target varied, top-1 on the real images and the BN mismatch on the
held-out synthetic samples:

    none     no ABN (lp_squant)
    w<x>     target moved from the FP32 statistics on the data towards the trained ones by x (best: 0.5)
    p<x>     w = 0.5 with each channel's move bounded by x (Recipe.abn_max_pull)
    real     target = the FP32 statistics on real images (not data-free: a check of what the target must be)

    python bench/abn_targets.py --model mobilenet_v2_proxy --configs W6A6 W4A8 W4A4 --variants none w0.5 w0 p0.05

Resumable: every run is saved to --out (default bench/results/abn_targets_<model>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from unittest import mock

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1, find_shared_data  # noqa: E402
from pyquant.dfq import abn  # noqa: E402
from pyquant.quant import graph as qgraph  # noqa: E402
from pyquant.selection import bn_mismatch  # noqa: E402
from quantize_table import CONFIGS, save_json  # noqa: E402
from selection_study import cached_data, load_model  # noqa: E402


def discrepancy(moments, st) -> tuple:
    """(mean |log(std / trained std)|, mean |mean - trained mean| / trained std) over channels."""
    mean, std = moments
    s = st.out_std.double().abs().clamp(min=1e-8)
    return (float((std.clamp(min=1e-12) / s).log().abs().mean()),
            float(((mean - st.out_mean.double()).abs() / s).mean()))


def variant_overrides(variant: str, real_moments) -> tuple:
    """(quantize overrides, patch of abn.blended_targets or None) of a variant name."""
    base = {"select_among": (), "reconstruct": None, "abn_max_data_misfit": None}  # ABN always: what is studied
    if variant == "none":
        return dict(base, abn=False), None
    if variant.startswith("w"):
        return dict(base, abn_bn_weight=float(variant[1:])), None
    if variant.startswith("p"):
        return dict(base, abn_bn_weight=0.5, abn_max_pull=float(variant[1:])), None
    if variant == "real":
        blend = abn.blended_targets
        return base, lambda stats, fp, w, max_pull=None: blend(stats, {n: real_moments[n] for n in fp}, 0.0)
    raise ValueError(f"unknown variant {variant!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2_proxy")
    p.add_argument("--configs", nargs="+", default=["W6A6", "W4A8", "W4A4"], choices=list(CONFIGS))
    p.add_argument("--variants", nargs="+", default=["none", "w0.5", "w0", "p0.1", "p0.05"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "pyquant", "selection"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or f"bench/results/abn_targets_{args.model}.json"
    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    model, images, labels = load_model(args.model, data_dir)
    blob = cached_data(model, args.model, args.seed, 128, 32, 200, args.cache_dir)
    data, holdout = blob["x"][:128], blob["x"][128:]
    folded, bn_stats = qgraph.fold_bn(model)
    names = list(bn_stats)
    on_data = abn._output_moments(folded, names, data)
    on_real = abn._output_moments(folded, names, images[:1000])
    results = json.load(open(out)) if os.path.isfile(out) else {}
    results["layers"] = {}
    for n in names:
        (data_log_std, data_mean), (real_log_std, real_mean) = (discrepancy(on_data[n], bn_stats[n]),
                                                                discrepancy(on_real[n], bn_stats[n]))
        results["layers"][n] = {"data_log_std": data_log_std, "data_mean": data_mean,
                                "real_log_std": real_log_std, "real_mean": real_mean}
    for n, v in results["layers"].items():
        print(f"{n:32s} data {v['data_log_std']:.3f} {v['data_mean']:.3f}   real {v['real_log_std']:.3f} {v['real_mean']:.3f}")
    runs = results.setdefault("runs", {})
    for config in args.configs:
        w, a = CONFIGS[config]
        for variant in args.variants:
            key = f"{config}|seed{args.seed}|{variant}"
            if key in runs:
                continue
            overrides, patch = variant_overrides(variant, on_real)
            t0 = time.perf_counter()
            with mock.patch.object(abn, "blended_targets", patch) if patch else contextlib.nullcontext():
                q = pyquant.quantize(model, "best", w_bits=w, a_bits=a, input_shape=(3, 32, 32), seed=args.seed,
                                     data=data, progress=False, **overrides)
            runs[key] = {"top1": evaluate_top1(q, images, labels), "bn_mismatch": bn_mismatch(q, holdout),
                         "seconds": time.perf_counter() - t0}
            save_json(out, results)
            print(key, json.dumps(runs[key]), flush=True)


if __name__ == "__main__":
    main()
