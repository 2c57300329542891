"""What the network-input quantizer costs at low bit, and what the synthetic data cost (issue 11, docs/pipeline.md).

`best`'s own calibration (no selection) on the development networks, one seed, at W4A4 / W3A3, top-1 on 5,000 of
the shared test images (a fixed permutation, seed 123: images perm[5000:]; the real-image calibration of the
oracle rows uses perm[:128], outside them). Settings, each a `+`-joined list:

    strict     every activation quantizer at the table's width, the network input included (the default)
    in8        the network input at 8 bit (Recipe.input_bits = 8)
    pool8      the pooled classifier features at 8 bit too (their tied quantizer widened; a check, not an API)
    fl8        first and last layer, and their inputs, at 8 bit (Recipe.first_last_bits = 8)
    p<x>       activation clips minimising the L_x error instead of MSE (act_estimator_kwargs p)
    recon      block reconstruction at this width (reconstruct_below_bits=5)
    real       calibrate on 128 real images instead of the cached ZeroQ data (not data-free: an oracle)

    python bench/input_bits_study.py --models resnet32 resnet44 --settings strict in8 in8+pool8 fl8 in8+recon

Resumable: every run is saved to --out (default bench/results/input_bits_study.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1  # noqa: E402
from pyquant.quant import graph as qgraph  # noqa: E402
from pyquant.quant.quantizer import FakeQuantizer  # noqa: E402
from quantize_table import CONFIGS, save_json  # noqa: E402
from selection_study import cached_data, load_model, start_study  # noqa: E402


def overrides(parts) -> dict:
    over = dict(select_among=(), reconstruct=None)
    for part in parts:
        if part == "in8":
            over["input_bits"] = 8
        elif part == "fl8":
            over["first_last_bits"] = 8
        elif part == "recon":
            over.pop("reconstruct")
            over["reconstruct_below_bits"] = 5
        elif part in ("strict", "pool8", "real"):
            continue  # the convention by default; pool8 and real are applied in main
        elif part.startswith("p"):
            over["act_estimator_kwargs"] = {"p": float(part[1:])}
        else:
            raise ValueError(f"unknown setting part {part!r}")
    return over


def widened_pool_features(prepare):
    """qgraph.prepare with every tied (pooled-feature) quantizer at 8 bit."""
    def wrapped(*args, **kwargs):
        gm = prepare(*args, **kwargs)
        for name in gm.act_quantizer_sites:
            q = gm.get_submodule(name)
            if q.tied_to is not None:
                wide = FakeQuantizer(q.spec.replace(bits=8))
                wide.tied_to = q.tied_to
                setattr(gm, name, wide)
        return gm
    return wrapped


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet32", "resnet44"])
    p.add_argument("--configs", nargs="+", default=["W4A4"], choices=list(CONFIGS))
    p.add_argument("--settings", nargs="+", default=["strict", "in8", "in8+pool8", "fl8", "in8+recon"])
    p.add_argument("--out", default="bench/results/input_bits_study.json")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "pyquant", "selection"))
    args = p.parse_args(argv)
    data_dir, results = start_study(args.out, {"runs": {}, "fp32": {}})
    prepare = qgraph.prepare
    for name in args.models:
        model, images, labels = load_model(name, data_dir)
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(123))
        eval_x, eval_y = images[perm[5000:]], labels[perm[5000:]]
        results["fp32"].setdefault(name, evaluate_top1(model, eval_x, eval_y))
        blob = cached_data(model, name, 0, 128, 32, 200, args.cache_dir)
        for config in args.configs:
            for setting in args.settings:
                key = f"{name}|{config}|{setting}|seed0"
                if key in results["runs"]:
                    continue
                parts = setting.split("+")
                data = images[perm[:128]] if "real" in parts else blob["x"][:128]
                qgraph.prepare = widened_pool_features(prepare) if "pool8" in parts else prepare
                w, a = CONFIGS[config]
                t0 = time.perf_counter()
                try:
                    q = pyquant.quantize(model, "best", w_bits=w, a_bits=a, input_shape=(3, 32, 32), data=data,
                                         seed=0, progress=False, **overrides(parts))
                finally:
                    qgraph.prepare = prepare
                results["runs"][key] = {"top1": evaluate_top1(q, eval_x, eval_y),
                                        "seconds": time.perf_counter() - t0}
                save_json(args.out, results)
                print(f"{key}: {results['runs'][key]['top1']:.2f} %")


if __name__ == "__main__":
    main()
