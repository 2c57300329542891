"""Does the data-free selection signal pick the candidate that is best on real images? (issue 13)

For each development network (ResNet-32, ResNet-44: all 10,000 shared CIFAR-10 JPEG test images; the
MobileNetV2 proxy of bench/train_proxy.py: its 5,000 held-out images) and bit-width, builds every
candidate recipe on the same ZeroQ data (128 samples) and records, per candidate, the selection signals (KL on 32 held-out synthetic samples, pyquant.selection.output_divergence;
the BN-statistic mismatch on them, bn_mismatch; KL on 64 N(0,1) inputs, noise_divergence) and the real top-1. The networks
reported in the README (ResNet-20/56) are not used here. Resumable: every cell is saved to --out.

    python bench/selection_study.py --models resnet32 resnet44 mobilenet_v2_proxy --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz  # noqa: E402
from pyquant.models import resnet_cifar  # noqa: E402
from pyquant.selection import bn_mismatch, noise_divergence, output_divergence  # noqa: E402
from quantize_table import CHECKPOINTS, CONFIGS, save_json  # noqa: E402

# name -> (recipe, overrides); best's own candidates as its selection judges them: calibrated, not reconstructed
CANDIDATES = {
    # ABN always (best's gate on the data's fit off: the candidate is what the gate decides about)
    "lp_squant_abn": ("best", {"select_among": (), "reconstruct": None, "abn_max_pull": None,
                               "abn_max_data_misfit": None}),
    # the same with ABN's pull towards the trained statistics bounded per channel (pyquant.dfq.abn, max_pull)
    "lp_squant_abn_pull": ("best", {"select_among": (), "reconstruct": None, "abn_max_pull": 0.1,
                                    "abn_max_data_misfit": None}),
    "lp_squant": ("best", {"select_among": (), "abn": False, "reconstruct": None}),
    "zeroq": ("zeroq", {}),
    "dfq": ("dfq", {}),
    "squant": ("squant", {}),
}


SIGNAL_FIELDS = ("divergence", "bn_mismatch", "noise_kl")


def start_study(out: str, empty: dict):
    """The shared start of a development study: one thread, the shared data folder (exits without it) and the
    results saved so far in ``out`` (``empty`` when there are none). Returns (data_dir, results)."""
    torch.set_num_threads(1)
    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    return data_dir, (json.load(open(out)) if os.path.isfile(out) else empty)


def load_model(name: str, data_dir: str):
    if name == "mobilenet_v2_proxy":
        from train_proxy import load_proxy, proxy_split

        _, _, ex, ey = proxy_split(data_dir)
        return load_proxy(), ex, ey
    images, labels = load_cifar10_npz(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz"))
    return resnet_cifar(int(name[6:]), checkpoint=os.path.join(data_dir, CHECKPOINTS[name])), images, labels


def cached_data(model, name, seed, n, holdout, iterations, cache_dir):
    path = os.path.join(cache_dir, f"{name}_zeroq_s{seed}_n{n}+{holdout}_it{iterations}.pt")
    if os.path.isfile(path):
        return torch.load(path, weights_only=True)
    t0 = time.perf_counter()
    x = pyquant.distill.zeroq(model, n + holdout, (3, 32, 32), batch_size=64, iterations=iterations, seed=seed,
                              progress=False)
    os.makedirs(cache_dir, exist_ok=True)
    torch.save({"x": x, "seconds": time.perf_counter() - t0}, path)
    return torch.load(path, weights_only=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet32", "resnet44", "mobilenet_v2_proxy"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--holdout", type=int, default=32)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--first-last-bits", type=int, default=None)
    p.add_argument("--out", default="bench/results/selection_study.json")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "pyquant", "selection"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    results = json.load(open(args.out)) if os.path.isfile(args.out) else {"runs": {}, "fp32": {}}
    convention = "all" if args.first_last_bits is None else f"fl{args.first_last_bits}"
    for name in args.models:
        model, images, labels = load_model(name, data_dir)
        results["fp32"].setdefault(name, evaluate_top1(model, images, labels))
        for seed in args.seeds:
            blob = cached_data(model, name, seed, args.num_samples, args.holdout, args.iterations, args.cache_dir)
            data, holdout = blob["x"][:args.num_samples], blob["x"][args.num_samples:]
            jobs = [(c, k) for c in args.configs for k in args.candidates]
            for config, cand in tqdm(jobs, desc=f"{name} seed {seed}"):
                key = f"{name}|{config}|{convention}|seed{seed}|{cand}"
                if key in results["runs"] and all(f in results["runs"][key] for f in SIGNAL_FIELDS):
                    continue
                recipe, overrides = CANDIDATES[cand]
                w, a = CONFIGS[config]
                t0 = time.perf_counter()
                q = pyquant.quantize(model, recipe, w_bits=w, a_bits=a, input_shape=(3, 32, 32), seed=seed, data=data,
                                     progress=False, first_last_bits=args.first_last_bits, **overrides)
                seconds = time.perf_counter() - t0
                signals = {"divergence": lambda: output_divergence(model, q, holdout),
                           "bn_mismatch": lambda: bn_mismatch(q, holdout),
                           "noise_kl": lambda: noise_divergence(model, q, (3, 32, 32), seed=seed)}
                run = results["runs"].setdefault(key, {})
                if "top1" not in run:
                    run.update(divergence_calib=output_divergence(model, q, data), top1=evaluate_top1(q, images, labels),
                               seconds=seconds, distill_s=blob["seconds"])
                for f in SIGNAL_FIELDS:  # a run recorded before a signal existed gets it added
                    if f not in run:
                        run[f] = signals[f]()
                save_json(args.out, results)
                tqdm.write(f"{key}: {json.dumps(run)}")
    for signal in SIGNAL_FIELDS:
        print(f"\nsignal: {signal}\n" + report(results, signal))


def report(results, signal: str = "divergence") -> str:
    """Per model/config: each candidate's top-1 and ``signal``; which one the signal picks; the oracle."""
    groups = {}
    for key, r in results["runs"].items():
        name, config, conv, seed, cand = key.split("|")
        groups.setdefault((name, config, conv, seed), {})[cand] = r
    lines = ["| model | config | seed | " + " | ".join(CANDIDATES) + " | picked | oracle | regret (pt) |",
             "|---|---|---|" + "---:|" * len(CANDIDATES) + "---|---|---:|"]
    for (name, config, conv, seed), c in sorted(groups.items()):
        if any(signal not in r for r in c.values()):
            continue
        picked = min(c, key=lambda k: c[k][signal])
        oracle = max(c, key=lambda k: c[k]["top1"])
        cells = [f"{c[k]['top1']:.2f} ({c[k][signal]:.3g})" if k in c else "-" for k in CANDIDATES]
        lines.append(f"| {name} ({conv}) | {config} | {seed} | " + " | ".join(cells) +
                     f" | {picked} | {oracle} | {c[oracle]['top1'] - c[picked]['top1']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
