"""Does `best`'s block reconstruction transfer off the CIFAR ResNets? The digits CNN (the `pyquant` default
job's network: scikit-learn digits, trained and cached by pyquant.models.digits_cnn, no shared data needed),
`best` with and without reconstruction on the same synthetic data (256 + 32 held-out ZeroQ samples, seed 0),
quantize seeds 0-2, top-1 on the 450 held-out real digits. Seconds per run.

    python bench/digits_reconstruct.py --out bench/results/digits_reconstruct.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1  # noqa: E402
from pyquant.data.digits import load_digits_split  # noqa: E402
from pyquant.models.digits_cnn import INPUT_SHAPE, digits_cnn  # noqa: E402
from quantize_table import save_json  # noqa: E402

CONFIGS = {"W4A8": (4, 8), "W4A4": (4, 4), "W3A3": (3, 3)}
# best as it ships (reconstruction below 4 bit), never reconstructing, and reconstructing below 5 bit (opt-in)
# and reconstructing at every width without the keep-or-discard check (Recipe.reconstruct_keep_ratio): what the
# reconstruction itself does to this network
VARIANTS = {"best": {}, "calibration_only": {"reconstruct": None}, "best_rb5": {"reconstruct_below_bits": 5},
            "reconstruct_unchecked": {"reconstruct_below_bits": 5, "reconstruct_keep_ratio": None}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="bench/results/digits_reconstruct.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = digits_cnn(progress=False)
    x, y = load_digits_split("test")
    data = pyquant.distill.zeroq(model, 256 + 32, INPUT_SHAPE, seed=0, progress=False)
    results = json.load(open(args.out)) if os.path.isfile(args.out) else {}
    results["fp32"] = evaluate_top1(model, x, y)
    results.setdefault("runs", {})
    for config, (w, a) in CONFIGS.items():
        for variant, changes in VARIANTS.items():
            accs = []
            for seed in args.seeds:
                if f"{config}|{variant}|seed{seed}" in results["runs"]:
                    accs.append(results["runs"][f"{config}|{variant}|seed{seed}"]["top1"])
                    continue
                q = pyquant.quantize(model, "best", w_bits=w, a_bits=a, input_shape=INPUT_SHAPE, data=data[:256],
                                     holdout=data[256:], seed=seed, progress=False, **changes)
                accs.append(evaluate_top1(q, x, y))
                results["runs"][f"{config}|{variant}|seed{seed}"] = {"top1": accs[-1],
                                                                    "recipe": q.quant_report.recipe}
            print(f"{config} {variant:16s} {statistics.mean(accs):6.2f} ± {statistics.stdev(accs):.2f}  "
                  f"(FP32 {results['fp32']:.2f})", flush=True)
    save_json(args.out, results)


if __name__ == "__main__":
    main()
