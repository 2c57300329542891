"""ZeroQ mixed precision on the real ResNet-20: KL sensitivity of every layer at every bit-width on
ZeroQ-distilled data, the exact Pareto frontier (plotted to docs/mixed_frontier.png), and the
weight-only top-1 on the real CIFAR-10 test images (JPEG q75 set, all 10,000) of the frontier points
at an average of 3, 4 and 6 bits against uniform bit-widths of the same size.

    PYTHONPATH=. python bench/mixed_report.py [--samples 64] [--iterations 500]

One thread (torch.set_num_threads(1)); the machine was shared with other jobs. Weights: per output
channel, symmetric, MSE clip (range_search), the quantizer the sensitivity measures; activations FP32;
every layer (first and last included) gets a bit-width from the allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from pyquant import distill, ops
from pyquant.data.cifar import evaluate_top1, find_shared_data, load_cifar10_npz
from pyquant.dfq.squant import squant_weight
from pyquant.mixed import allocate_bits, layer_sensitivity, pareto_frontier, plot_frontier, weight_sizes
from pyquant.mixed.sensitivity import quantize_weight, signed_grid
from pyquant.models import resnet_cifar

BITS = (2, 3, 4, 5, 6, 8)


def apply_bits(model, assignment, rounding):
    q = resnet_cifar(20)
    q.load_state_dict(model.state_dict())
    modules = dict(q.named_modules())
    with torch.no_grad():
        for name, bits in assignment.items():
            w = modules[name].weight.detach()
            if rounding == "rtn":
                modules[name].weight.copy_(quantize_weight(w, bits))
            else:
                qmin, qmax = signed_grid(bits)
                scale, zp, _ = ops.range_search(w, qmin, qmax, axis=0, symmetric=True)
                modules[name].weight.copy_(squant_weight(w, scale, zp, qmin, qmax))
    return q.eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--json", default="bench/results/mixed.json")
    p.add_argument("--png", default="docs/mixed_frontier.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = find_shared_data()
    if root is None:
        raise SystemExit("shared data not found (set PYQUANT_DATA)")
    model = resnet_cifar(20, checkpoint=os.path.join(root, "resnet20-12fca82f.th")).eval()
    images, labels = load_cifar10_npz(os.path.join(root, "cifar10_test_jpeg_q75.npz"))

    t0 = time.perf_counter()
    data = distill.zeroq(model, args.samples, (3, 32, 32), batch_size=32, iterations=args.iterations, seed=0)
    t_distill = time.perf_counter() - t0
    t0 = time.perf_counter()
    sens = layer_sensitivity(model, data, bits_options=BITS)
    t_sens = time.perf_counter() - t0
    sens_sq = layer_sensitivity(model, data, bits_options=BITS, rounding="squant")
    sizes = weight_sizes(model)
    params = sum(sizes.values())
    t0 = time.perf_counter()
    frontier = pareto_frontier(sens, sizes)
    t_dp = time.perf_counter() - t0
    print(f"distill {t_distill:.1f} s ({args.samples} samples x {args.iterations} it), sensitivity {t_sens:.1f} s "
          f"({len(sizes)} layers x {len(BITS)} bit-widths), Pareto DP {t_dp * 1e3:.1f} ms, {len(frontier)} points")

    fp32 = evaluate_top1(model, images, labels)
    print(f"FP32 top-1 on {images.shape[0]} images: {fp32:.2f} %  (weight-only, activations FP32)")
    rows, marks = [], {}
    for avg in (3, 4, 6):
        budget = avg * params
        mixed = allocate_bits(sens, sizes, budget)
        uniform = {n: avg for n in sizes}
        point = next(pt for pt in reversed(frontier) if pt[0] <= budget)
        uni_sens = sum(sens[n][avg] for n in sizes)
        marks[f"mixed avg<={avg} b"] = point
        marks[f"uniform W{avg}"] = (avg * params, uni_sens, uniform)
        row = {"avg_bits_budget": avg, "mixed_avg_bits": point[0] / params, "mixed_sensitivity": point[1],
               "uniform_sensitivity": uni_sens, "assignment": mixed}
        for rounding in ("rtn", "squant"):
            row[f"uniform_{rounding}"] = evaluate_top1(apply_bits(model, uniform, rounding), images, labels)
            row[f"mixed_{rounding}"] = evaluate_top1(apply_bits(model, mixed, rounding), images, labels)
        # the allocation from sensitivities measured with SQuant rounding, evaluated with SQuant
        mixed_sq = allocate_bits(sens_sq, sizes, budget)
        row["assignment_squant_sensitivity"] = mixed_sq
        row["mixed_squant_sensitivity_squant"] = evaluate_top1(apply_bits(model, mixed_sq, "squant"), images, labels)
        rows.append(row)
        print(f"  avg {avg} b: uniform W{avg}: sens {uni_sens:.4f}, top-1 RTN {row['uniform_rtn']:.2f} / SQuant "
              f"{row['uniform_squant']:.2f};  mixed ({row['mixed_avg_bits']:.2f} b avg): sens {point[1]:.4f}, "
              f"top-1 RTN {row['mixed_rtn']:.2f} / SQuant {row['mixed_squant']:.2f}")
        print("    bits: " + " ".join(f"{b}" for b in mixed.values()))
        print(f"    SQuant-measured sensitivities -> top-1 with SQuant {row['mixed_squant_sensitivity_squant']:.2f}; bits: "
              + " ".join(f"{b}" for b in mixed_sq.values()))
    plot_frontier(frontier, args.png, chosen=marks, title="ResNet-20 (CIFAR-10): ZeroQ sensitivity Pareto frontier")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"threads": 1, "samples": args.samples, "iterations": args.iterations, "bits_options": BITS,
                   "times_s": {"distill": t_distill, "sensitivity": t_sens, "dp": t_dp}, "fp32_top1": fp32,
                   "sensitivity": {n: {str(b): v for b, v in d.items()} for n, d in sens.items()},
                   "sensitivity_squant": {n: {str(b): v for b, v in d.items()} for n, d in sens_sq.items()}, "sizes": sizes,
                   "frontier_points": len(frontier), "rows": rows}, f, indent=1)
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
