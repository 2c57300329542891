"""ResNet-20 (real weights) end to end: FP32 -> pyquant.quantize (W8A8) -> pyquant.int8.convert.

Reports top-1 of FP32 / fake-quant / int8 on the 10,000 real CIFAR-10 test images (JPEG q75), top-1 agreement
int8 vs fake-quant, the fraction of equal activation codes (layer-wise and end to end), and latency per image at
batch 1 and throughput at batch 256, int8 vs FP32 (same run, interleaved rounds, medians; 1 and 2 threads).

    PYTHONPATH=. python bench/int8_end_to_end.py [--recipe zeroq] [--calib real|synthetic] [--rounds 7]

Writes bench/results/int8_end_to_end.json. The machine may be shared with other jobs: timings are medians of
interleaved rounds and only ratios within one run are meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from tqdm import tqdm

import pyquant
from pyquant import int8
from pyquant.data.cifar import evaluate_top1, find_shared_data, load_cifar10_npz
from pyquant.models import resnet_cifar


@torch.no_grad()
def predictions(model, x, batch_size=500):
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in tqdm(range(0, len(x), batch_size),
                                                                         desc="eval", leave=False)])


def float64_fake_quant(fq):
    """The fake-quant network evaluated in float64 (quantizers keep their float32 rounding rule via
    pyquant.reference.fake_quant; convolutions and adds in double): near-exact arithmetic between quantizers,
    to tell which of float32 fake-quant and int8 is closer to it."""
    import copy
    import types

    from pyquant.quant.quantizer import FakeQuantizer
    from pyquant.reference.fake_quant import fake_quant

    m = copy.deepcopy(fq).double()
    for q in m.modules():
        if isinstance(q, FakeQuantizer):
            q.scale = q.scale.float()

            def forward(self, x):
                if not self.enabled:
                    return x
                return fake_quant(x, self.scale, self.zero_point, self.qmin, self.qmax, self.axis)
            q.forward = types.MethodType(forward, q)
    return lambda x: m(x.double())


@torch.no_grad()
def time_rounds(models: dict, x: torch.Tensor, rounds: int, iters: int) -> dict:
    """Median seconds per call of each model, measured round by round in turn (interleaved)."""
    for m in models.values():  # warm-up
        m(x)
    samples = {k: [] for k in models}
    for _ in tqdm(range(rounds), desc=f"timing batch {x.shape[0]}", leave=False):
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                m(x)
            samples[k].append((time.perf_counter() - t0) / iters)
    return {k: statistics.median(v) for k, v in samples.items()}


def _save(res, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)


def _print_accuracy(res):
    print(f"top-1 FP32 {res['top1_fp32']:.2f} %  fake-quant {res['top1_fake_quant']:.2f} %  int8 {res['top1_int8']:.2f} %"
          f"  agreement int8 vs fake-quant {res['agreement_int8_vs_fake_quant']:.2f} %", flush=True)
    print(f"float64 fake-quant agrees with int8 on {res['agreement_int8_vs_fake_quant_float64']:.2f} %, with "
          f"float32 fake-quant on {res['agreement_fake_quant_float32_vs_float64']:.2f} %", flush=True)
    for mode in ("layerwise", "end_to_end"):
        per = res[f"codes_{mode}"]
        print(f"codes {mode}: min equal {100 * min(v['equal'] for v in per.values()):.4f} %, "
              f"max diff {max(v['max_diff'] for v in per.values())} step(s)")
        for name, v in per.items():
            print(f"  {name:24s} equal {100 * v['equal']:8.4f} %  max diff {v['max_diff']}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="zeroq")
    ap.add_argument("--calib", choices=["real", "synthetic"], default="real",
                    help="real: 256 test images as calibration data (fast); synthetic: the recipe's own data")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench/results/int8_end_to_end.json")
    args = ap.parse_args()

    root = find_shared_data()
    if root is None:
        raise SystemExit("shared data not found (set PYQUANT_DATA)")
    x, y = load_cifar10_npz(os.path.join(root, "cifar10_test_jpeg_q75.npz"))
    fp32 = resnet_cifar(20, checkpoint=os.path.join(root, "resnet20-12fca82f.th"))
    data = x[3::39][:256] if args.calib == "real" else None
    torch.manual_seed(0)
    fq = pyquant.quantize(fp32, args.recipe, w_bits=8, a_bits=8, input_shape=(3, 32, 32), data=data, seed=0)
    q = int8.convert(fq)

    res = {"recipe": args.recipe, "calib": args.calib, "w_bits": 8, "a_bits": 8, "images": len(x)}
    res["top1_fp32"] = evaluate_top1(fp32, x, y)
    p_fq, p_q = predictions(fq, x), predictions(q, x)
    res["top1_fake_quant"] = 100.0 * (p_fq == y).double().mean().item()
    res["top1_int8"] = 100.0 * (p_q == y).double().mean().item()
    res["agreement_int8_vs_fake_quant"] = 100.0 * (p_fq == p_q).double().mean().item()
    p_64 = predictions(float64_fake_quant(fq), x)
    res["agreement_int8_vs_fake_quant_float64"] = 100.0 * (p_64 == p_q).double().mean().item()
    res["agreement_fake_quant_float32_vs_float64"] = 100.0 * (p_64 == p_fq).double().mean().item()
    sub = x[::10]  # 1,000 images, every class
    for mode, layerwise in (("layerwise", True), ("end_to_end", False)):
        reps = [int8.compare_codes(fq, q, sub[i:i + 250], layerwise=layerwise) for i in range(0, len(sub), 250)]
        per = {}
        for name in reps[0]:
            n = sum(r[name]["numel"] for r in reps)
            per[name] = {"equal": sum(r[name]["equal"] * r[name]["numel"] for r in reps) / n,
                         "max_diff": max(r[name]["max_diff"] for r in reps)}
        res[f"codes_{mode}"] = per

    _save(res, args.out)
    _print_accuracy(res)
    timings = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch, iters in ((1, 20), (256, 1)):
            t = time_rounds({"fp32": fp32, "int8": q}, x[:batch], args.rounds, iters)
            timings[f"threads{threads}_batch{batch}"] = {
                "fp32_ms_per_image": 1e3 * t["fp32"] / batch, "int8_ms_per_image": 1e3 * t["int8"] / batch,
                "fp32_images_per_s": batch / t["fp32"], "int8_images_per_s": batch / t["int8"],
                "speedup_int8_vs_fp32": t["fp32"] / t["int8"]}
    res["timings"] = timings
    res["torch"] = torch.__version__
    res["build"] = pyquant.build_info() if callable(getattr(pyquant, "build_info", None)) else None

    _save(res, args.out)
    for k, v in timings.items():
        print(f"{k}: FP32 {v['fp32_ms_per_image']:.3f} ms/img ({v['fp32_images_per_s']:.0f} img/s), int8 "
              f"{v['int8_ms_per_image']:.3f} ms/img ({v['int8_images_per_s']:.0f} img/s), int8/FP32 speedup "
              f"{v['speedup_int8_vs_fp32']:.2f}x")


if __name__ == "__main__":
    main()
