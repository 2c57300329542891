"""ZeroQ's step size and the quality of its data (issues 11 and 13): does a smaller Adam learning rate, which
reaches a lower BN-statistic loss in the same 200 iterations, give better quantized networks?

Development networks only (ResNet-32, ResNet-44, the MobileNetV2 proxy): 128 + 32 held-out ZeroQ samples per
(network, seed, lr), cached (lr 0.5 shares selection_study.py's cache files), then ``best`` at the given widths,
every layer quantized, top-1 on all 10,000 shared JPEG test images (the proxy: its 5,000 held-out images).
Records the final per-sample BN loss of the data (``measure_bn_loss``) beside the accuracy. One thread.

    python bench/distill_lr_study.py --models resnet32 resnet44 --lrs 0.5 0.1 --configs W4A4
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
from quantize_table import CONFIGS, save_json  # noqa: E402
from selection_study import load_model, start_study  # noqa: E402


def zeroq_data(model, name, seed, lr, n, holdout, iterations, cache_dir):
    tag = "" if lr == 0.5 else f"_lr{lr:g}"  # lr 0.5 (ZeroQ's) is selection_study.py's cache entry
    path = os.path.join(cache_dir, f"{name}_zeroq_s{seed}_n{n}+{holdout}_it{iterations}{tag}.pt")
    if not os.path.isfile(path):
        t0 = time.perf_counter()
        x = pyquant.distill.zeroq(model, n + holdout, (3, 32, 32), batch_size=64, iterations=iterations, seed=seed,
                                  lr=lr, progress=False)
        os.makedirs(cache_dir, exist_ok=True)
        torch.save({"x": x, "seconds": time.perf_counter() - t0}, path)
    return torch.load(path, weights_only=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet32", "resnet44"])
    p.add_argument("--lrs", nargs="+", type=float, default=[0.5, 0.1])
    p.add_argument("--configs", nargs="+", default=["W4A4"], choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", default="bench/results/distill_lr_study.json")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "pyquant", "selection"))
    args = p.parse_args(argv)
    data_dir, results = start_study(args.out, {"runs": {}})
    for name in args.models:
        model, images, labels = load_model(name, data_dir)
        model.eval()
        fp32 = results.setdefault("fp32", {}).get(name)
        if fp32 is None:
            fp32 = results["fp32"][name] = evaluate_top1(model, images, labels)
        for seed in args.seeds:
            for lr in args.lrs:
                saved = zeroq_data(model, name, seed, lr, 128, 32, 200, args.cache_dir)
                x = saved["x"]
                bn_loss = pyquant.distill.measure_bn_loss(model, x[:128], per_sample=True)
                for config in args.configs:
                    key = f"{name}|{config}|lr{lr:g}|seed{seed}"
                    if key in results["runs"]:
                        continue
                    w, a = CONFIGS[config]
                    t0 = time.perf_counter()
                    q = pyquant.quantize(model, "best", w_bits=w, a_bits=a, input_shape=(3, 32, 32), data=x[:128],
                                         holdout=x[128:], seed=seed, progress=False)
                    top1 = evaluate_top1(q, images, labels)
                    results["runs"][key] = {"top1": top1, "fp32": fp32, "bn_loss": float(bn_loss),
                                            "distill_s": float(saved["seconds"]),
                                            "quantize_s": time.perf_counter() - t0,
                                            "chosen": q.quant_report.selection.chosen}
                    print(f"{key}: top-1 {top1:.2f} (FP32 {fp32:.2f}), data BN loss {float(bn_loss):.1f}, "
                          f"chose {q.quant_report.selection.chosen}", flush=True)
                    save_json(args.out, results)


if __name__ == "__main__":
    main()
