"""KD fine-tuning on ZeroQ data (pyquant.finetune.kd_finetune, issue 11): settings chosen on ResNet-32, reported
on ResNet-20.

Every layer quantized (W4A4 by default), per-channel weights, per-tensor activations. Per cell: ZeroQ data
(``--num-samples`` x ``--iterations``, cached on disk with the seconds it took), the calibration of ``best``'s
own pipeline (Lp weight clips + SQuant, MSE activation clips, ABN; no selection) on it, then KD fine-tuning
with the cell's setting. Wall time = distillation + calibration + fine-tuning (the fine-tuning's from its
per-epoch times, so a resumed cell still counts every finished epoch), single thread; also the process CPU
seconds of the same phases (the honest cost when other jobs share the cores). Evaluation: the shared
JPEG CIFAR-10 test set, ``--eval-images`` of them (a fixed subset, the same for every cell: a seeded
permutation's first N) or all 10,000. Resumable: finished cells are kept in --out, an interrupted KD resumes
from its per-epoch checkpoint.

    python bench/kd_study.py --model resnet32 --eval-images 2000 --settings calib kl kl_aug
    python bench/kd_study.py --model resnet20 --eval-images 10000 --settings calib <chosen> --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz  # noqa: E402
from pyquant.models import resnet_cifar  # noqa: E402
from quantize_table import CHECKPOINTS, CONFIGS, save_json  # noqa: E402

# name -> kd_finetune keyword arguments (None = calibration only)
SETTINGS = {
    "calib": None,
    "kl": dict(epochs=40, batch_size=32, lr=1e-4, lr_step=1e-4),
    "kl_aug": dict(epochs=40, batch_size=32, lr=1e-4, lr_step=1e-4, augment=True),
    "kl_aug_lr3": dict(epochs=40, batch_size=32, lr=1e-3, lr_step=1e-3, augment=True),
    "kl_aug_ce_bn": dict(epochs=40, batch_size=32, lr=1e-4, lr_step=1e-4, augment=True, ce_weight=0.5,
                         bn_weight=0.01),
    "kl_aug_t4": dict(epochs=40, batch_size=32, lr=1e-4, lr_step=1e-4, augment=True, temperature=4.0),
    "kl_aug_long": dict(epochs=80, batch_size=32, lr=1e-4, lr_step=1e-4, augment=True),
}
CALIBRATION = dict(recipe="best", select_among=())


def zeroq_data(model, name, seed, n, iterations, cache_dir):
    path = os.path.join(cache_dir, f"{name}_zeroq_s{seed}_n{n}_it{iterations}.pt")
    if not os.path.isfile(path):
        t0, c0 = time.perf_counter(), time.process_time()
        x = pyquant.distill.zeroq(model, n, (3, 32, 32), batch_size=64, iterations=iterations, seed=seed,
                                  progress=False)
        os.makedirs(cache_dir, exist_ok=True)
        torch.save({"x": x, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}, path)
    saved = torch.load(path, weights_only=True)
    return saved["x"], float(saved["seconds"]), float(saved["cpu_seconds"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet32", choices=sorted(CHECKPOINTS))
    p.add_argument("--config", default="W4A4", choices=list(CONFIGS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--iterations", type=int, default=80)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", default="bench/results/kd_study.json")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "pyquant", "kd_study"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_dir = find_shared_data()
    if data_dir is None:
        raise SystemExit("shared data not found (set PYQUANT_DATA)")
    images, labels = load_cifar10_npz(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz"))
    if args.eval_images < images.shape[0]:
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:args.eval_images]
        images, labels = images[keep], labels[keep]
    results = json.load(open(args.out)) if os.path.isfile(args.out) else {"cells": {}, "fp32": {}}
    model = resnet_cifar(int(args.model[6:]), checkpoint=os.path.join(data_dir, CHECKPOINTS[args.model])).eval()
    eval_key = f"{args.model}/{images.shape[0]}"
    if eval_key not in results["fp32"]:
        results["fp32"][eval_key] = evaluate_top1(model, images, labels)
        save_json(args.out, results)
    w, a = CONFIGS[args.config]
    for seed in args.seeds:
        for setting in args.settings:
            key = (f"{args.model}/{args.config}/{setting}/s{seed}/n{args.num_samples}_it{args.iterations}"
                   f"/eval{images.shape[0]}")
            if key in results["cells"]:
                continue
            data, distill_s, distill_cpu = zeroq_data(model, args.model, seed, args.num_samples, args.iterations,
                                                      args.cache_dir)
            kd = SETTINGS[setting]
            overrides = {}
            if kd is not None:
                ckpt = os.path.join(args.cache_dir, "kd_ckpt", key.replace("/", "_"))
                overrides["finetune"] = dict(kd, checkpoint_dir=ckpt)
            t0, c0 = time.perf_counter(), time.process_time()
            qm = pyquant.quantize(model, CALIBRATION["recipe"], w_bits=w, a_bits=a, input_shape=(3, 32, 32),
                                  seed=seed, data=data, progress=True, select_among=CALIBRATION["select_among"],
                                  **overrides)
            steps = {s["step"]: s["seconds"] for s in qm.quant_report.steps}
            log = getattr(qm, "kd_log", [])
            resumed = kd is not None and len(log) > 0 and steps.get("finetune:kd", 0.0) < 0.9 * sum(
                e["seconds"] for e in log)
            kd_s = sum(e["seconds"] for e in log)
            calib_s = time.perf_counter() - t0 - steps.get("finetune:kd", 0.0)
            kd_cpu = sum(e["cpu_seconds"] for e in log)
            calib_cpu = time.process_time() - c0 - (kd_cpu if not resumed else 0.0)
            top1 = evaluate_top1(qm, images, labels)
            cell = {"model": args.model, "config": args.config, "setting": setting, "kd": kd, "seed": seed,
                    "num_samples": args.num_samples, "iterations": args.iterations,
                    "eval_images": int(images.shape[0]), "top1": top1, "fp32": results["fp32"][eval_key],
                    "distill_s": distill_s, "calibration_s": calib_s, "kd_s": kd_s,
                    "wall_s": distill_s + calib_s + kd_s,
                    "cpu_s": distill_cpu + calib_cpu + kd_cpu, "resumed": resumed, "kd_log": log,
                    "threads": args.threads}
            results["cells"][key] = cell
            save_json(args.out, results)
            print(f"{key}: top1 {top1:.2f} (fp32 {cell['fp32']:.2f}) wall {cell['wall_s']:.0f} s, "
                  f"cpu {cell['cpu_s']:.0f} s (distill {distill_s:.0f}, calib {calib_s:.0f}, kd {kd_s:.0f})",
                  flush=True)


if __name__ == "__main__":
    main()
