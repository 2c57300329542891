"""SQuant on the real ResNet-20: speed of the squant_round op against the plain-PyTorch reference,
and weight-only top-1 on the real CIFAR-10 test images (JPEG q75 set, all 10,000) for round-to-nearest
(SQuant-E), SQuant-EK and SQuant-EKC at W3/W4 per-channel symmetric, with min-max and MSE clips.

    PYTHONPATH=. python bench/squant_report.py [--rounds 15] [--json bench/results/squant.json]

One thread (torch.set_num_threads(1)); the machine is shared with other jobs, so the variants are
interleaved round by round and medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from pyquant import ops
from pyquant.data.cifar import evaluate_top1, find_shared_data, load_cifar10_npz
from pyquant.dfq.squant import squant_weight
from pyquant.models import resnet_cifar
from pyquant.reference import squant as ref


def layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def clip_scale(w, bits, method):
    qmax = (1 << (bits - 1)) - 1
    if method == "minmax":
        return w.abs().flatten(1).amax(1).clamp_min(1e-12) / qmax
    scale, _, _ = ops.range_search(w, -qmax - 1, qmax, axis=0, symmetric=True)
    return scale


def timing(model, rounds):
    bits = 4
    qmin, qmax = -8, 7
    xs = []
    for _, m in layers(model):
        w = m.weight.detach()
        s = clip_scale(w, bits, "mse")
        xs.append(w / s.view((-1,) + (1,) * (w.dim() - 1)))
    variants = {
        "pyquant.ops.squant_round (C++)": lambda: [ops.squant_round(x, qmin, qmax) for x in xs],
        "reference.squant_round (PyTorch)": lambda: [ref.squant_round(x, qmin, qmax) for x in xs],
        "round-to-nearest (torch.round)": lambda: [torch.round(x.clamp(qmin, qmax)) for x in xs],
    }
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, f in variants.items():  # interleaved
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"layers": len(xs), "params": sum(x.numel() for x in xs), "median_s": med,
            "speedup_vs_reference": med["reference.squant_round (PyTorch)"] / med["pyquant.ops.squant_round (C++)"]}


def quantized_copy(model, bits, clip, kernel_stage, channel_stage):
    q = resnet_cifar(20)
    q.load_state_dict(model.state_dict())
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    with torch.no_grad():
        for _, m in layers(q):
            w = m.weight.detach()
            s = clip_scale(w, bits, clip)
            m.weight.copy_(squant_weight(w, s, 0, qmin, qmax, kernel_stage=kernel_stage, channel_stage=channel_stage))
    return q.eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", default="bench/results/squant.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = find_shared_data()
    if root is None:
        raise SystemExit("shared data not found (set PYQUANT_DATA)")
    model = resnet_cifar(20, checkpoint=os.path.join(root, "resnet20-12fca82f.th")).eval()
    images, labels = load_cifar10_npz(os.path.join(root, "cifar10_test_jpeg_q75.npz"))

    result = {"threads": 1, "images": int(images.shape[0]), "timing": timing(model, args.rounds)}
    t = result["timing"]
    print(f"SQuant on all {t['layers']} ResNet-20 weights ({t['params']} params), W4, median of {args.rounds} rounds:")
    for k, v in t["median_s"].items():
        print(f"  {k:36s} {v * 1e3:8.2f} ms")
    print(f"  op vs reference: {t['speedup_vs_reference']:.1f}x")

    fp32 = evaluate_top1(model, images, labels)
    result["fp32_top1"] = fp32
    print(f"\nFP32 top-1 on {images.shape[0]} images: {fp32:.2f} %  (weight-only quantization below, activations FP32)")
    rows = []
    for bits in (4, 3):
        for clip in ("minmax", "mse"):
            row = {"bits": bits, "clip": clip}
            for name, stages in (("RTN (SQuant-E)", (False, False)), ("SQuant-EK", (True, False)),
                                 ("SQuant-EKC", (True, True))):
                row[name] = evaluate_top1(quantized_copy(model, bits, clip, *stages), images, labels)
            rows.append(row)
            print(f"  W{bits} {clip:6s}  RTN {row['RTN (SQuant-E)']:6.2f}  EK {row['SQuant-EK']:6.2f}  "
                  f"EKC {row['SQuant-EKC']:6.2f}")
    result["accuracy"] = rows
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
