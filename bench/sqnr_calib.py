"""Quantization SQNR of every range estimator on ResNet-20 (CIFAR-10) weights and activations,
and the plot of one layer's activation histogram with the clip each estimator picks.

    python bench/sqnr_calib.py --plot docs/calibration_clips.png

Weights: every conv / linear weight, per output channel, signed grid [-2^(b-1), 2^(b-1) - 1].
Activations: the output of every ReLU (19 layers), per tensor, unsigned grid [0, 2^b - 1],
calibrated on 256 CIFAR-10 test images (4 batches of 64, accumulated) and scored on 256 others.
SQNR = 10 log10(sum x^2 / sum (x - fake_quant(x))^2) per layer, averaged over layers (dB).
"""

from __future__ import annotations

import argparse
import math
import os

import torch
from torch import nn

from pyquant import calib, ops
from pyquant.data import find_shared_data, load_cifar10_npz
from pyquant.models import resnet_cifar

WEIGHT_ESTIMATORS = {
    "min-max": lambda: calib.MinMaxEstimator(axis=0, symmetric=True),
    "percentile 99.99": lambda: calib.PercentileEstimator(99.99, axis=0, bins=512),
    "MSE (range_search)": lambda: calib.MSEEstimator(axis=0),
    "entropy (KL)": lambda: calib.EntropyEstimator(axis=0, bins=512),
    "SAWB": lambda: calib.SAWBEstimator(axis=0),
}
ACT_ESTIMATORS = {
    "min-max": lambda: calib.MinMaxEstimator(),
    "percentile 99.99": lambda: calib.PercentileEstimator(99.99),
    "MSE (histogram)": lambda: calib.HistogramLpEstimator(),
    "entropy (KL)": lambda: calib.EntropyEstimator(),
}


def sqnr_db(x: torch.Tensor, scale, zero_point, qmin, qmax, axis=None) -> float:
    y = ops.fake_quant(x, scale, zero_point, qmin, qmax, axis=axis)
    noise = (x.double() - y.double()).pow(2).sum().item()
    signal = x.double().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def relu_outputs(model: nn.Module, images: torch.Tensor, batch: int = 64):
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    store = {n: [] for n in names}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: store[n].append(out.detach().clone()))
             for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            model(images[i:i + batch])
    for h in hooks:
        h.remove()
    return names, store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default=None, help="write the clip plot (PNG) here")
    parser.add_argument("--plot-layer", default="layer2.0.relu1")
    args = parser.parse_args()
    data = find_shared_data()
    if data is None:
        raise SystemExit("shared data not found (set PYQUANT_DATA)")
    torch.manual_seed(0)
    model = resnet_cifar(20, checkpoint=os.path.join(data, "resnet20-12fca82f.th"))
    images, _ = load_cifar10_npz(os.path.join(data, "cifar10_test_jpeg_q75.npz"))
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    calib_images, eval_images = images[perm[:256]], images[perm[256:512]]

    rows = {}
    weights = [(n, m.weight.detach()) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for bits in (8, 4):
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        for name, make in WEIGHT_ESTIMATORS.items():
            vals = []
            for _, w in weights:
                scale, zp = make().observe(w).qparams(qmin, qmax)
                vals.append(sqnr_db(w, scale, zp, qmin, qmax, axis=0))
            rows.setdefault(("weights", name), {})[bits] = sum(vals) / len(vals)

    names, calib_acts = relu_outputs(model, calib_images)
    _, eval_acts = relu_outputs(model, eval_images, batch=256)
    clips = {}
    for bits in (8, 4):
        qmin, qmax = 0, 2 ** bits - 1
        for name, make in ACT_ESTIMATORS.items():
            vals = []
            for layer in names:
                est = make()
                for batch in calib_acts[layer]:
                    est.observe(batch)
                scale, zp = est.qparams(qmin, qmax)
                vals.append(sqnr_db(eval_acts[layer][0], scale, zp, qmin, qmax))
                if layer == args.plot_layer and bits == 4:
                    clips[name] = float(scale) * (qmax - int(zp))
            rows.setdefault(("activations", name), {})[bits] = sum(vals) / len(vals)

    print("| tensor | estimator | SQNR 8-bit (dB) | SQNR 4-bit (dB) |")
    print("|---|---|---:|---:|")
    for (kind, name), v in rows.items():
        print(f"| {kind} | {name} | {v[8]:.2f} | {v[4]:.2f} |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = torch.cat([t.reshape(-1) for t in calib_acts[args.plot_layer]])
        fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
        xmax = float(x.max())
        counts = ops.histogram(x, 256, 0.0, xmax).double()
        edges = torch.linspace(0, xmax, 257)
        ax.bar(edges[:-1].numpy(), counts.numpy(), width=xmax / 256, align="edge", color="0.6", label="ResNet-20 "
               f"{args.plot_layer} output (256 images)")
        ax.set_yscale("log")
        colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
        for (name, clip), col in zip(clips.items(), colors):
            ax.axvline(clip, color=col, lw=2, ls="--", label=f"{name}: clip {clip:.2f}")
        ax.set_xlabel("activation value")
        ax.set_ylabel("count (log)")
        ax.set_title("4-bit clip chosen by each estimator (unsigned grid [0, 15])")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
