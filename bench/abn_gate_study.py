"""Gating ABN on the synthetic data's fit to the trained BN statistics (issue 13, docs/transfer.md).

Per network and seed: the FP32 network's misfit on its ZeroQ data (``pyquant.dfq.abn.data_misfit``: median over
BN layers of the mean |log(std on the data / trained std)|; the cached 128 + 32 samples of
bench/selection_study.py). Where it exceeds the gate (``--max-misfit``), `best` with the gate
(``abn_max_data_misfit``, ``misfit_select_signal``) is run and scored; where it does not, `best` is unchanged by
construction (tests/test_dfq.py) and only the misfit is recorded.

    python bench/abn_gate_study.py --models resnet20 resnet32 resnet44 mobilenet_v2_proxy

Resumable: every result is saved to --out (default bench/results/abn_gate_study.json).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyquant  # noqa: E402
from pyquant.data import evaluate_top1  # noqa: E402
from pyquant.dfq.abn import data_misfit  # noqa: E402
from quantize_table import CONFIGS, save_json  # noqa: E402
from selection_study import cached_data, load_model, start_study  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["resnet20", "resnet32", "resnet44", "mobilenet_v2_proxy"])
    p.add_argument("--configs", nargs="+", default=["W6A6", "W4A8", "W4A4"], choices=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--max-misfit", type=float, default=0.1)
    p.add_argument("--signal", default="noise_kl")
    p.add_argument("--out", default="bench/results/abn_gate_study.json")
    p.add_argument("--table-cache", default=None,
                   help="also record the misfit of bench/quantize_table.py's cached ZeroQ data in this folder "
                        "(<model>_zeroq_s<seed>_n160_it200.pt, first 128 samples): the reported networks' runs")
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "pyquant", "selection"))
    args = p.parse_args(argv)
    data_dir, results = start_study(args.out, {"misfit": {}, "runs": {}, "fp32": {}})
    if args.table_cache:
        for f in sorted(os.listdir(args.table_cache)):
            m = re.fullmatch(r"(resnet\d+)_zeroq_s(\d+)_n160_it200\.pt", f)
            if m:
                model, _, _ = load_model(m.group(1), data_dir)
                data = torch.load(os.path.join(args.table_cache, f), weights_only=True)[:128]
                results["misfit"][f"{m.group(1)}|seed{m.group(2)}|quantize_table"] = data_misfit(model, data)
                print(f"{f}: misfit {results['misfit'][f'{m.group(1)}|seed{m.group(2)}|quantize_table']:.4f}")
        save_json(args.out, results)
    for name in args.models:
        model, images, labels = load_model(name, data_dir)
        results["fp32"].setdefault(name, evaluate_top1(model, images, labels))
        for seed in args.seeds:
            blob = cached_data(model, name, seed, 128, 32, 200, args.cache_dir)
            data, holdout = blob["x"][:128], blob["x"][128:]
            misfit = data_misfit(model, data)
            results["misfit"][f"{name}|seed{seed}"] = misfit
            save_json(args.out, results)
            verdict = "gate closed" if misfit > args.max_misfit else "ABN runs"
            print(f"{name} seed {seed}: misfit {misfit:.4f} ({verdict})")
            if misfit <= args.max_misfit:
                continue
            for config in args.configs:
                key = f"{name}|{config}|seed{seed}|gate{args.max_misfit:g}|{args.signal}"
                if key in results["runs"]:
                    continue
                w, a = CONFIGS[config]
                t0 = time.perf_counter()
                q = pyquant.quantize(model, "best", w_bits=w, a_bits=a, input_shape=tuple(data.shape[1:]), seed=seed,
                                     data=data, holdout=holdout, progress=False, abn_max_data_misfit=args.max_misfit,
                                     misfit_select_signal=args.signal)
                sel = q.quant_report.selection
                results["runs"][key] = {"top1": evaluate_top1(q, images, labels), "chosen": sel.chosen,
                                        "candidates": sel.candidates, "seconds": time.perf_counter() - t0}
                save_json(args.out, results)
                print(f"{key}: {results['runs'][key]['top1']:.2f} % ({sel.chosen})")


if __name__ == "__main__":
    main()
