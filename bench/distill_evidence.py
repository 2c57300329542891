"""Evidence on real weights: how good is each generator's synthetic data?

For CIFAR-10 ResNet-20 (shared data folder), each generator (ZeroQ, DSG, AAC, Genie) makes
--num-samples images with --iterations steps per batch. Reported per data source:
  * the BN-statistic loss (batch statistics, sum over the 19 BN layers; pyquant.distill.measure_bn_loss),
  * top-1 on the 10,000 real CIFAR-10 test images (JPEG q75 copy; FP32 81.03 %) of W8A8 and W4A8
    fake-quant ResNet-20 whose activation ranges are min-max calibrated on that data
    (weights: symmetric per-output-channel min-max; activations: per-tensor asymmetric min-max on every
    conv/linear input; the helpers of pyquant.demo),
beside calibration on 512 real test images and on plain Gaussian noise.

    python bench/distill_evidence.py --num-samples 128 --iterations 500 --out bench/results/distill_evidence.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

import pyquant
from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz
from pyquant.demo import ActivationQuantizer, quantize_weights_
from pyquant.distill import measure_bn_loss
from pyquant.models import resnet_cifar


def quantized_top1(model, calib, images, labels, w_bits, a_bits):
    q = copy.deepcopy(model)
    quantize_weights_(q, w_bits)
    ActivationQuantizer(q, a_bits, calib)
    return evaluate_top1(q, images, labels)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--methods", nargs="+", default=["zeroq", "dsg", "aac", "genie"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="bench/results/distill_evidence.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = find_shared_data()
    if data is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    model = resnet_cifar(20, checkpoint=os.path.join(data, "resnet20-12fca82f.th"))
    images, labels = load_cifar10_npz(os.path.join(data, "cifar10_test_jpeg_q75.npz"))
    fp32 = evaluate_top1(model, images, labels)
    g = torch.Generator().manual_seed(args.seed)
    real = images[torch.randperm(images.shape[0], generator=g)[:512]]
    sources = {"real (512 test images)": real,
               "Gaussian noise": torch.randn(args.num_samples, 3, 32, 32, generator=g)}
    seconds = {}
    for method in args.methods:
        fn = getattr(pyquant.distill, method)
        t0 = time.perf_counter()
        x = fn(model, args.num_samples, (3, 32, 32), batch_size=args.batch_size, iterations=args.iterations,
               seed=args.seed, progress=True)
        seconds[method] = time.perf_counter() - t0
        sources[method] = x
        print(f"{method}: {args.num_samples} samples in {seconds[method]:.0f} s", flush=True)
    rows = []
    for name, calib in sources.items():
        row = {"data": name, "samples": calib.shape[0], "bn_loss": measure_bn_loss(model, calib),
               "seconds": seconds.get(name)}
        for w_bits, a_bits in ((8, 8), (4, 8)):
            row[f"W{w_bits}A{a_bits}"] = quantized_top1(model, calib, images, labels, w_bits, a_bits)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"fp32_top1": fp32, "model": "CIFAR-10 ResNet-20 (akamaster, resnet20-12fca82f.th)",
              "test_images": int(images.shape[0]), "iterations": args.iterations, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nFP32 top-1 on the {images.shape[0]} test images: {fp32:.2f} %")
    print("| calibration data | samples | BN-stat loss | W8A8 top-1 (%) | W4A8 top-1 (%) | generation time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        t = f"{r['seconds']:.0f}" if r["seconds"] else "-"
        print(f"| {r['data']} | {r['samples']} | {r['bn_loss']:.3f} | {r['W8A8']:.2f} | {r['W4A8']:.2f} | {t} |")


if __name__ == "__main__":
    main()
