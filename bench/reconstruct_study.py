"""Block reconstruction (recipe ``brecq``, pyquant.finetune.reconstruct) on real weights and real images (issue 11).

Settings are chosen on ResNet-32 (development network, ``--eval subset``: a fixed 2,000-image subset of the
shared JPEG CIFAR-10 test set, every 5th image, 200 per class) and reported on ResNet-20/56 (``--eval full``:
all 10,000 images). Every layer is quantized (no first/last exception). Wall time per run = ZeroQ
distillation + the rest of pyquant.quantize (reconstruction included); evaluation not counted.

Resumable: every finished run is written to --out at once and skipped on a rerun; the synthetic data is
cached on disk, and reconstruction checkpoints after every block (``checkpoint_dir``), so a kill loses
at most the block in progress (a resumed run is marked ``resumed``, its wall time is then not comparable).
One thread (the machine is shared).

    python bench/reconstruct_study.py --models resnet32 --configs W4A4 --settings base it250 --eval subset
    python bench/reconstruct_study.py --models resnet20 --configs W4A4 W3A3 --settings chosen --seeds 0 1 2 \\
        --eval full --out bench/results/reconstruct_table.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.finetune.augment import low_pass  # noqa: E402
from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz  # noqa: E402
from pyquant.models import resnet_cifar  # noqa: E402
from quantize_table import CHECKPOINTS, save_json, synthetic_data  # noqa: E402

CONFIGS = {"W4A8": (4, 8), "W4A4": (4, 4), "W3A3": (3, 3), "W2A4": (2, 4)}
# recipe best's calibration (SQuant rounding, ABN halfway to the trained statistics, no selection) as changes to brecq
BEST_CALIBRATION = {"weight_rounding": "squant", "abn": True, "abn_after_activations": True, "abn_below_bits": 8,
                    "abn_bn_weight": 0.5}

# name -> changes to recipe ``brecq``: num_samples / data_iterations (ZeroQ) and reconstruct keyword arguments
# (merged into the recipe's own). "chosen" is what recipe brecq is set to after the study.
SETTINGS = {
    "base": {},
    "it250": {"reconstruct": {"iterations": 250}},
    "it1000": {"reconstruct": {"iterations": 1000}},
    "n256": {"num_samples": 256},
    "n1024": {"num_samples": 1024},
    "qdrop0": {"reconstruct": {"qdrop_p": 0.0}},
    "qdrop1": {"reconstruct": {"qdrop_p": 1.0}},
    "lr3e-3": {"reconstruct": {"lr_rounding": 3e-3, "lr_weight_step": 3e-3, "lr_act_step": 3e-3}},
    "lr3e-4": {"reconstruct": {"lr_rounding": 3e-4, "lr_weight_step": 3e-4, "lr_act_step": 3e-4}},
    "distill100": {"data_iterations": 100},
    # the same recipe (same data, same calibration) with reconstruction off: the baseline reconstruction must beat
    "none": {"reconstruct": None},
    "noact": {"reconstruct": {"learn_act_step": False}},
    "nostep": {"reconstruct": {"learn_weight_step": False}},
    "reg0.1": {"reconstruct": {"reg_weight": 0.1}},
    # no reconstruction, but recipe best's calibration (SQuant rounding, ABN, no selection) on the same data
    "none_best": {"reconstruct": None, "weight_rounding": "squant", "abn": True, "abn_after_activations": True,
                  "abn_below_bits": 8, "abn_bn_weight": 0.5},
    # base and noact again, run after the fix of the pooled features' tied quantizer in reconstruct (it quantized
    # the last block's FP32 target and did not follow its source's learned step); every run above is before it
    "base_fixed": {},
    "noact_fixed": {"reconstruct": {"learn_act_step": False}},
    # reconstruction (activation steps not learned) starting from none_best's calibration instead of brecq's
    "best_noact": {"weight_rounding": "squant", "abn": True, "abn_after_activations": True, "abn_below_bits": 8,
                   "abn_bn_weight": 0.5, "reconstruct": {"learn_act_step": False}},
    "best_noact_qdrop0": {"weight_rounding": "squant", "abn": True, "abn_after_activations": True,
                          "abn_below_bits": 8, "abn_bn_weight": 0.5,
                          "reconstruct": {"learn_act_step": False, "qdrop_p": 0.0}},
    "best_noact_it250": {"weight_rounding": "squant", "abn": True, "abn_after_activations": True,
                         "abn_below_bits": 8, "abn_bn_weight": 0.5,
                         "reconstruct": {"learn_act_step": False, "iterations": 250}},
    # best_noact again after reconstruct takes its targets from the FP32 network (fp_model; before, ABN's shifted
    # float network was the target)
    "best_noact_fptarget": {"weight_rounding": "squant", "abn": True, "abn_after_activations": True,
                            "abn_below_bits": 8, "abn_bn_weight": 0.5, "reconstruct": {"learn_act_step": False}},
    # best's data size (128 samples): its calibration alone, then + reconstruction (FP32 targets, activation steps
    # not learned) on the samples alone or with 3 / 7 flipped-and-shifted views of each (reconstruct(views=))
    "none_best_n128": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": None},
    "best_fpt_n128": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": {"learn_act_step": False}},
    "best_fpt_n128_v3": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": {"learn_act_step": False, "views": 3}},
    "best_fpt_n128_v7": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": {"learn_act_step": False, "views": 7}},
    # best_fpt_n128 with AdaRound starting from SQuant's rounding instead of the nearest level
    "best_fpt_n128_cur": {**BEST_CALIBRATION, "num_samples": 128,
                          "reconstruct": {"learn_act_step": False, "start_rounding": "current"}},
    # the same on the samples low-pass filtered (pyquant.finetune.augment.low_pass, keep = fraction of Nyquist):
    # ZeroQ images hold 59 % of their (non-DC) energy above half the Nyquist frequency, real CIFAR images 7 %
    "none_best_n128_lp50": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": None, "low_pass": 0.5},
    "none_best_n128_lp75": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": None, "low_pass": 0.75},
    "best_fpt_n128_lp50": {**BEST_CALIBRATION, "num_samples": 128, "low_pass": 0.5,
                           "reconstruct": {"learn_act_step": False}},
    "best_fpt_n128_lp50_v3": {**BEST_CALIBRATION, "num_samples": 128, "low_pass": 0.5,
                              "reconstruct": {"learn_act_step": False, "views": 3}},
    # DeepInversion's image prior during ZeroQ distillation (zeroq(tv_weight=, jitter=), pyquant.distill.image_prior)
    "none_best_n128_tv5": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": None, "data_kwargs": {"tv_weight": 5.0}},
    "none_best_n128_tv20": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": None,
                            "data_kwargs": {"tv_weight": 20.0}},
    "none_best_n128_j2": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": None, "data_kwargs": {"jitter": 2}},
    "none_best_n128_tv5_j2": {**BEST_CALIBRATION, "num_samples": 128, "reconstruct": None,
                              "data_kwargs": {"tv_weight": 5.0, "jitter": 2}},
    "chosen": {},
}


def subset(images, labels, which: str):
    if which == "full":
        return images, labels
    return images[::5], labels[::5]  # sorted by class: 200 of each


def recipe_for(setting: str, checkpoint_dir: str):
    base = pyquant.RECIPES["brecq"]
    changes = dict(SETTINGS[setting])
    changes.pop("low_pass", None)  # a data transform, applied by main()
    if "reconstruct" in changes and changes["reconstruct"] is None:  # reconstruction off
        return base.replace(**changes)
    rec = dict(base.reconstruct)
    rec.update(changes.pop("reconstruct", {}))
    rec["checkpoint_dir"] = checkpoint_dir
    return base.replace(reconstruct=rec, **changes)


def summarize(results) -> str:
    groups = {}
    for key, r in results["runs"].items():
        model, config, setting, seed, which = key.split("|")
        groups.setdefault((model, config, setting, which), []).append(r)
    lines = ["| model | config | setting | eval images | top-1 (mean ± std) | seeds | FP32 | drop (pt) | "
             "wall per run (distill + quantize) |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for (model, config, setting, which), runs in sorted(groups.items()):
        accs = [r["top1"] for r in runs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        fp = results["fp32"].get(f"{model}|{which}")
        walls = [r["distill_s"] + r["quantize_s"] for r in runs if not r.get("resumed")]
        wall = f"{statistics.mean(walls):.0f} s" if walls else "resumed"
        lines.append(f"| {model} | {config} | {setting} | {which} | {statistics.mean(accs):.2f} ± {sd:.2f} | "
                     f"{len(accs)} | {fp:.2f} | {fp - statistics.mean(accs):.2f} | {wall} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet32"], choices=sorted(CHECKPOINTS))
    p.add_argument("--configs", nargs="+", default=["W4A4"], choices=list(CONFIGS))
    p.add_argument("--settings", nargs="+", default=["base"], choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--eval", choices=["subset", "full"], default="subset")
    p.add_argument("--out", default="bench/results/reconstruct_study.json")
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "pyquant_reconstruct_study"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = json.load(open(args.out)) if os.path.isfile(args.out) else {}
    results.setdefault("runs", {})
    results.setdefault("fp32", {})
    results.setdefault("distill_seconds", {})
    if args.report_only:
        print(summarize(results))
        return
    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    images, labels = subset(*load_cifar10_npz(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz")), args.eval)
    for model_name in args.models:
        model = resnet_cifar(int(model_name[6:]), checkpoint=os.path.join(data_dir, CHECKPOINTS[model_name]))
        results["fp32"].setdefault(f"{model_name}|{args.eval}", evaluate_top1(model, images, labels))
        for setting in args.settings:
            for config in args.configs:
                for seed in args.seeds:
                    key = f"{model_name}|{config}|{setting}|seed{seed}|{args.eval}"
                    if key in results["runs"]:
                        continue
                    ckpt = os.path.join(args.cache_dir, "ckpt", key.replace("|", "_"))
                    resumed = os.path.isdir(ckpt)
                    recipe = recipe_for(setting, ckpt)
                    spec = types.SimpleNamespace(num_samples=recipe.num_samples, iterations=recipe.data_iterations,
                                                 cache_dir=args.cache_dir)
                    data, distill_s = synthetic_data(model, model_name, recipe.data, seed, spec,
                                                     results["distill_seconds"], kwargs=recipe.data_kwargs)
                    if "low_pass" in SETTINGS[setting]:
                        data = low_pass(data, SETTINGS[setting]["low_pass"])
                    w, a = CONFIGS[config]
                    print(f"== {key}: {json.dumps(SETTINGS[setting])}", flush=True)
                    t0 = time.perf_counter()
                    q = pyquant.quantize(model, recipe, w_bits=w, a_bits=a, input_shape=(3, 32, 32), seed=seed,
                                         data=data, progress=True)
                    quantize_s = time.perf_counter() - t0
                    results["runs"][key] = {"top1": evaluate_top1(q, images, labels), "distill_s": distill_s,
                                            "quantize_s": quantize_s, "resumed": resumed,
                                            "recipe": {"num_samples": recipe.num_samples,
                                                       "data_iterations": recipe.data_iterations,
                                                       "reconstruct": None if recipe.reconstruct is None else
                                                       {k: v for k, v in recipe.reconstruct.items()
                                                        if k != "checkpoint_dir"}},
                                            "block_losses": [(b["block"], b["first_loss"], b["final_loss"])
                                                             for b in getattr(q, "reconstruct_log", [])]}
                    save_json(args.out, results)
                    r = results["runs"][key]
                    print(f"{key}: {r['top1']:.2f} % (distill {distill_s:.0f} s + quantize {quantize_s:.0f} s)",
                          flush=True)
    print(summarize(results))


if __name__ == "__main__":
    main()
