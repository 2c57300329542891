"""The accuracy table of pyquant.quantize on real weights and real images (issue 5, README main table).

Every recipe x {W8A8, W6A6, W4A8, W4A4} x seeds on CIFAR-10 ResNet-20 (and -56) from the shared data
folder, evaluated on the 10,000 real CIFAR-10 test images there (JPEG q75 copy; FP32 ResNet-20 81.03 %,
ResNet-56 83.20 %). Reports top-1 mean +- std over seeds beside FP32, and the wall time per run:
synthetic-data generation (shared by the recipes that use the same generator and seed, so generated
once and cached) and the rest of the pipeline. Results are checkpointed to --out after every run; a
rerun skips the runs already there (resume after a kill). One thread (other jobs share the machine).

    python bench/quantize_table.py --models resnet20 --seeds 0 1 2 --num-samples 128 --iterations 200 \\
        --out bench/results/quantize_table.json
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz  # noqa: E402
from pyquant.models import resnet_cifar  # noqa: E402
from pyquant.recipes import convention_of  # noqa: E402

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
               "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}
CONFIGS = {"W8A8": (8, 8), "W6A6": (6, 6), "W4A8": (4, 8), "W4A4": (4, 4), "W3A3": (3, 3), "W2A4": (2, 4)}


def _merge(into: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def save_json(path, obj):
    """Write ``obj`` merged into what ``path`` holds now (nested dicts are united, ``obj`` wins on a clash),
    atomically and under a lock, so that several study processes can share one results file: a run another
    process finished since this one started is kept, not overwritten. Keys are only ever added."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(os.path.abspath(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = _merge(json.load(open(path)), obj) if os.path.isfile(path) else obj
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def recipe_available(name: str) -> bool:
    recipe = pyquant.RECIPES[name]
    needs = (["pyquant.dfq.squant"] if recipe.weight_rounding == "squant" else []) + \
        (["pyquant.mixed"] if recipe.mixed_precision_bits is not None else [])
    for module in needs:
        try:
            importlib.import_module(module)
        except ImportError:
            return False
    return True


def synthetic_data(model, model_name, generator, seed, args, cache, holdout=0, kwargs=None):
    """Generated once per (model, generator, seed, size) and cached on disk with its generation time.
    ``holdout`` extra samples (for the selecting recipes) come after the first ``num_samples``, which are
    the same with or without them (one seed per batch of 64). ``kwargs``: the generator's own settings
    (part of the cache key)."""
    num = args.num_samples + holdout
    kwargs = dict(kwargs or {})
    key = f"{model_name}_{generator}_s{seed}_n{num}_it{args.iterations}" + "".join(
        f"_{k}{v}" for k, v in sorted(kwargs.items()))
    path = os.path.join(args.cache_dir, key + ".pt")
    sidecar = os.path.join(args.cache_dir, key + ".seconds")
    if os.path.isfile(path) and (key in cache or os.path.isfile(sidecar)):
        if key not in cache:
            cache[key] = float(open(sidecar).read())
        return torch.load(path, weights_only=True), cache[key]
    t0 = time.perf_counter()
    fn = getattr(pyquant.distill, generator)
    data = fn(model, num, (3, 32, 32), batch_size=min(64, num), iterations=args.iterations,
              seed=seed, progress=False, **kwargs)
    seconds = time.perf_counter() - t0
    os.makedirs(args.cache_dir, exist_ok=True)
    torch.save(data, path)
    with open(sidecar, "w") as f:
        f.write(repr(seconds))
    cache[key] = seconds
    return data, seconds


def summarize(results, models, recipes, configs, convention):
    lines = []
    for model_name in models:
        fp = results.get("fp32", {}).get(model_name)
        lines.append(f"\n{model_name} (FP32 {fp:.2f} % on the 10,000 JPEG test images; {convention})\n")
        lines.append("| recipe | " + " | ".join(configs) + " | wall time per run (data + quantize) |")
        lines.append("|---|" + "---:|" * len(configs) + "---:|")
        for recipe in recipes:
            cells, times = [], []
            for c in configs:
                runs = [v for k, v in results["runs"].items()
                        if k.startswith(f"{model_name}|{recipe}|{c}|{convention}|")]
                if not runs:
                    cells.append("-")
                    continue
                accs = [r["top1"] for r in runs]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                cells.append(f"{statistics.mean(accs):.2f} ± {sd:.2f} (n={len(accs)})")
                times += [r["distill_s"] + r["quantize_s"] for r in runs]
            t = f"{statistics.median(times):.0f} s" if times else "-"
            lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {t} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20"], choices=sorted(CHECKPOINTS))
    p.add_argument("--recipes", nargs="+", default=sorted(pyquant.RECIPES))
    p.add_argument("--configs", nargs="+", default=["W8A8", "W6A6", "W4A8", "W4A4"], choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--first-last-bits", type=int, default=None,
                   help="bits of the first and last layer (default: all layers at the table's bits)")
    p.add_argument("--input-bits", type=int, default=None,
                   help="bits of the network-input quantizer (default: the table's activation bits)")
    p.add_argument("--calibration-only", action="store_true",
                   help="run each recipe with reconstruct=None (same data), stored as '<recipe>_calibration': the "
                        "baseline its reconstruction is measured against")
    p.add_argument("--reconstruct-below-bits", type=int, default=None,
                   help="run each recipe with this reconstruct_below_bits (its reconstruction at more widths), stored "
                        "as '<recipe>_rb<N>'")
    p.add_argument("--out", default="bench/results/quantize_table.json")
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "pyquant_quantize_table"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true", help="print the tables of --out and exit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report_only:
        write_report(args, json.load(open(args.out)))
        return
    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("shared data folder not found (set PYQUANT_DATA)")
    images, labels = load_cifar10_npz(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz"))
    results = json.load(open(args.out)) if os.path.isfile(args.out) else {}
    results.setdefault("runs", {})
    results.setdefault("fp32", {})
    results.setdefault("distill_seconds", {})
    results["settings"] = {"num_samples": args.num_samples, "iterations": args.iterations, "threads": args.threads,
                           "images": "cifar10_test_jpeg_q75.npz (10,000)"}
    convention = convention_of(pyquant.Recipe(first_last_bits=args.first_last_bits, input_bits=args.input_bits))
    recipes = [r for r in args.recipes if recipe_available(r)]
    skipped = sorted(set(args.recipes) - set(recipes))
    if skipped:
        print(f"skipping {skipped}: the SQuant kernel / mixed precision are not in this checkout")
    jobs = [(m, s, r, c) for m in args.models for s in args.seeds for r in recipes for c in args.configs]
    bar = tqdm(jobs, desc="quantize table")
    for model_name, seed, recipe, config in bar:
        label = (f"{recipe}_calibration" if args.calibration_only else
                 f"{recipe}_rb{args.reconstruct_below_bits}" if args.reconstruct_below_bits is not None else recipe)
        changes = {"reconstruct": None} if args.calibration_only else (
            {"reconstruct_below_bits": args.reconstruct_below_bits} if args.reconstruct_below_bits is not None else {})
        key = f"{model_name}|{label}|{config}|{convention}|seed{seed}"
        if key in results["runs"]:
            continue
        model = resnet_cifar(int(model_name[6:]), checkpoint=os.path.join(data_dir, CHECKPOINTS[model_name]))
        if model_name not in results["fp32"]:
            results["fp32"][model_name] = evaluate_top1(model, images, labels)
        generator = pyquant.RECIPES[recipe].data
        holdout_n = pyquant.RECIPES[recipe].select_holdout if pyquant.RECIPES[recipe].select_among else 0
        data, holdout, distill_s = None, None, 0.0
        if generator is not None:
            data, distill_s = synthetic_data(model, model_name, generator, seed, args, results["distill_seconds"],
                                             holdout_n)
            data, holdout = data[:args.num_samples], (data[args.num_samples:] if holdout_n else None)
        w, a = CONFIGS[config]
        bar.set_postfix_str(key)
        t0 = time.perf_counter()
        q = pyquant.quantize(model, recipe, w_bits=w, a_bits=a, input_shape=(3, 32, 32), seed=seed, data=data,
                             holdout=holdout, progress=False, first_last_bits=args.first_last_bits,
                             input_bits=args.input_bits, **changes)
        quantize_s = time.perf_counter() - t0
        top1 = evaluate_top1(q, images, labels)
        results["runs"][key] = {"top1": top1, "distill_s": distill_s, "quantize_s": quantize_s}
        if getattr(q.quant_report, "selection", None) is not None:
            results["runs"][key]["selected"] = q.quant_report.selection.chosen
        check = getattr(q.quant_report, "reconstruction", None)
        if check is not None:  # best's keep-or-discard decision (Recipe.reconstruct_keep_ratio) and its evidence
            results["runs"][key]["reconstruction"] = {"kept": check.kept, "noise_kl_calibrated": check.calibrated,
                                                      "noise_kl_reconstructed": check.reconstructed}
        save_json(args.out, results)
        tqdm.write(f"{key}: {top1:.2f} % (data {distill_s:.0f} s + quantize {quantize_s:.1f} s)")
    write_report(args, results)


def write_report(args, results):
    """Tables for every convention present in the JSON (all recipes found there)."""
    conventions = sorted({k.split("|")[3] for k in results["runs"]})
    recipes = sorted({k.split("|")[1] for k in results["runs"]})
    models = [m for m in args.models if m in results["fp32"]]
    table = "\n".join(summarize(results, models, [r for r in recipes if any(
        k.split("|")[1] == r and k.split("|")[3] == c for k in results["runs"])], args.configs, c) for c in conventions)
    print(table)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(f"settings: {json.dumps(results['settings'])}\n{table}\n")


if __name__ == "__main__":
    main()
