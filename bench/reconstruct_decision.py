"""When does block reconstruction help? Data-free signals for keeping or discarding it, per model (issues 11, 13).

Reconstruction gains 7-9 pt at W3A3 on ResNet-32/44 but loses 1-9 pt on the digits CNN: `best` needs to decide per
model, without real data. For each (network, width, seed) this builds `best`'s calibration (its selection, no
reconstruction) and the same calibration reconstructed (BEST_RECONSTRUCTION) on the same synthetic data, scores
both on real images (the truth the decision should follow) and computes candidate signals, each on synthetic
samples the reconstruction never saw (lower = closer to FP32):

- ``kl``: KL(FP32 || quantized) on the held-out samples (what the selection already uses);
- ``bn``: the BN-statistic mismatch on the held-out samples;
- ``kl_aug``: KL on the held-out samples shifted by up to 1/8 of their size and flipped, then mixed in pairs
  (mixup, lambda in [0.3, 0.7]) -- inputs off the synthetic manifold the reconstruction was fitted on;
- ``kl_noise``: KL on standard Gaussian noise;
- ``kl_fit``: KL on the calibration samples themselves (what reconstruction minimises; expected to favour it).

A signal decides "keep" when the reconstructed network's value is below the calibrated one's. Development
networks: ResNet-32/44 (CIFAR subset of the shared JPEG images), the digits CNN, the MobileNetV2 proxy when
trained (bench/train_proxy.py). Resumable: each finished run is written to --out at once and skipped on a rerun.

    python bench/reconstruct_decision.py --models digits resnet32 resnet44 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1  # noqa: E402
from pyquant.recipes import BEST_RECONSTRUCTION, CONVENTION_SETTINGS, get_recipe  # noqa: E402
from pyquant.selection import bn_mismatch, noise_divergence, output_divergence  # noqa: E402
from quantize_table import save_json, synthetic_data  # noqa: E402

CONFIGS = {"W6A6": (6, 6), "W4A8": (4, 8), "W4A4": (4, 4), "W3A3": (3, 3)}
DEFAULT_CONFIGS = ["W4A8", "W4A4", "W3A3"]  # the 20 runs the keep ratio was chosen on; W6A6 is a separate study
BEST_RATIO = pyquant.RECIPES["best"].reconstruct_keep_ratio
BEST_RULE = f"kl_noise < {BEST_RATIO} x"  # the rule best follows (Recipe.reconstruct_keep_ratio)


def load_network(name):
    """(model, input_shape, eval images, eval labels, calibration samples, held-out samples) per development network."""
    if name == "digits":
        from pyquant.data.digits import load_digits_split
        from pyquant.models.digits_cnn import INPUT_SHAPE, digits_cnn

        x, y = load_digits_split("test")
        return digits_cnn(progress=False), INPUT_SHAPE, x, y, 256, 32
    from pyquant.data import find_shared_data, load_cifar10_npz

    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    images, labels = load_cifar10_npz(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz"))
    if name == "proxy":
        from train_proxy import load_proxy, proxy_split

        _, _, x, y = proxy_split(data_dir)
        return load_proxy(), (3, 32, 32), x, y, 128, 32
    from quantize_table import CHECKPOINTS
    from pyquant.models import resnet_cifar

    model = resnet_cifar(int(name[6:]), checkpoint=os.path.join(data_dir, CHECKPOINTS[name]))
    return model, (3, 32, 32), images, labels, 128, 32


def augmented(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` randomly translated (up to 1/8 of each side, zero fill) and flipped, then mixed in pairs."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    padded = torch.nn.functional.pad(x, (pad_w, pad_w, pad_h, pad_h))
    out = torch.empty_like(x)
    for i in range(n):
        dy = int(torch.randint(0, 2 * pad_h + 1, (1,), generator=g))
        dx = int(torch.randint(0, 2 * pad_w + 1, (1,), generator=g))
        out[i] = padded[i, :, dy:dy + h, dx:dx + w]
        if torch.rand(1, generator=g) < 0.5:
            out[i] = out[i].flip(-1)
    lam = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    return lam * out + (1 - lam) * out[torch.randperm(n, generator=g)]


def signals(fp, q, data, holdout, seed):
    return {"kl": output_divergence(fp, q, holdout), "bn": bn_mismatch(q, holdout),
            "kl_aug": output_divergence(fp, q, augmented(holdout, seed)),
            "kl_noise": noise_divergence(fp, q, holdout.shape[1:], seed),  # what best's reconstruct_keep_ratio reads
            "kl_fit": output_divergence(fp, q, data)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["digits", "resnet32", "resnet44"])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--out", default="bench/results/reconstruct_decision.json")
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "pyquant_quantize_table"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = json.load(open(args.out)) if os.path.isfile(args.out) else {}
    results.setdefault("runs", {})
    results.setdefault("fp32", {})
    if not args.report_only:
        for name in args.models:
            model, shape, x, y, n, n_holdout = load_network(name)
            results["fp32"][name] = evaluate_top1(model, x, y)
            for seed in args.seeds:
                if name == "digits":
                    generated = pyquant.distill.zeroq(model, n + n_holdout, shape, seed=seed, progress=False)
                else:
                    opts = types.SimpleNamespace(num_samples=n, iterations=args.iterations, cache_dir=args.cache_dir)
                    generated, _ = synthetic_data(model, name, "zeroq", seed, opts, {}, n_holdout)
                data, holdout = generated[:n], generated[n:]
                for config in args.configs:
                    key = f"{name}|{config}|seed{seed}"
                    if key in results["runs"]:
                        continue
                    w, a = CONFIGS[config]
                    common = dict(w_bits=w, a_bits=a, input_shape=shape, seed=seed, data=data, progress=False)
                    t0 = time.perf_counter()
                    cal = pyquant.quantize(model, "best", holdout=holdout, reconstruct=None, **common)
                    t_cal = time.perf_counter() - t0
                    chosen = cal.quant_report.selection.chosen
                    best = get_recipe("best")
                    candidate = (best.replace(select_among=()) if chosen == "best" else
                                 get_recipe(chosen).replace(**{k: getattr(best, k) for k in CONVENTION_SETTINGS}))
                    t0 = time.perf_counter()
                    rec = pyquant.quantize(model, candidate.replace(data="zeroq", reconstruct=BEST_RECONSTRUCTION,
                                                                    reconstruct_below_bits=None,
                                                                    reconstruct_keep_ratio=None), **common)
                    t_rec = time.perf_counter() - t0
                    run = {"chosen": chosen, "seconds_calibration": t_cal, "seconds_reconstruct": t_rec}
                    for label, q in (("calibration", cal), ("reconstruct", rec)):
                        run[label] = {"top1": evaluate_top1(q, x, y), **signals(model.eval(), q, data, holdout, seed)}
                    results["runs"][key] = run
                    save_json(args.out, results)
                    print(f"{key}: {chosen}  calib {run['calibration']['top1']:.2f}  rec {run['reconstruct']['top1']:.2f}  "
                          + "  ".join(f"{s} {run['calibration'][s]:.4g}->{run['reconstruct'][s]:.4g}"
                                      for s in ("kl", "bn", "kl_aug", "kl_noise", "kl_fit")), flush=True)
    report(results)


def report(results):
    """Per run: the real gain of reconstruction and each signal's decision; per signal: how often it decides
    right and what following it gains against never / always reconstructing."""
    names = ("kl", "bn", "kl_aug", "kl_noise", "kl_fit")
    rows, right, gain = [], {s: 0 for s in names + (BEST_RULE,)}, {s: 0.0 for s in names + (BEST_RULE,)}
    always = never = oracle = 0.0
    for key, run in sorted(results["runs"].items()):
        c, r = run["calibration"], run["reconstruct"]
        delta = r["top1"] - c["top1"]
        keep = {s: r[s] < c[s] for s in names}
        keep[BEST_RULE] = r["kl_noise"] < BEST_RATIO * c["kl_noise"]
        for s in names + (BEST_RULE,):
            right[s] += keep[s] == (delta > 0)
            gain[s] += r["top1"] if keep[s] else c["top1"]
        always += r["top1"]
        never += c["top1"]
        oracle += max(r["top1"], c["top1"])
        rows.append(f"| {key} | {c['top1']:.2f} | {r['top1']:.2f} | {delta:+.2f} | "
                    + " | ".join(f"{r[s] / c[s]:.3f}{' keep' if keep[s] else ''}" for s in names) + " |")
    n = max(1, len(results["runs"]))
    print("| run | calibration | reconstruct | gain | " + " | ".join(f"{s} ratio" for s in names) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(names))
    print("\n".join(rows))
    print(f"\nmean top-1 over {n} runs: never {never / n:.2f}, always {always / n:.2f}, oracle {oracle / n:.2f}")
    for s in names + (BEST_RULE,):
        print(f"  {s:9s} right {right[s]}/{n}, following it {gain[s] / n:.2f}")


if __name__ == "__main__":
    main()
