"""Prints the ratios of bench_distill.py's results, the BN-loss share of a ZeroQ iteration, and the
peak RSS of a distillation step (fused op vs eager hooks, each in a fresh process).

    PYTHONPATH=. python -m pytest bench/bench_distill.py --benchmark-json bench/results/bench_distill.json
    PYTHONPATH=. python bench/report_distill.py --json bench/results/bench_distill.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

RSS_CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {bench!r})
torch.set_flush_denormal(True)
from bench_distill import zeroq_step_case
step, _ = zeroq_step_case({name!r}, {impl!r})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(3):
    step()
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(name, impl, threads):
    here = os.path.dirname(os.path.abspath(__file__))
    code = RSS_CHILD.format(bench=here, name=name, impl=impl, threads=threads)
    env = dict(os.environ, PYQ_BENCH_THREADS=str(threads), PYTHONPATH=os.path.dirname(here) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    before, after = map(int, out.stdout.split()[-2:])
    return before / 1024, after / 1024  # MiB (ru_maxrss is KiB on Linux)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="bench/results/bench_distill.json")
    p.add_argument("--rss-models", nargs="*", default=["resnet20", "resnet18"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    med = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        key = (info["kind"], tuple(info["shape"]) if "shape" in info else info["model"], info["impl"])
        med[key] = b["stats"]["median"]
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('cpu', {}).get('count', '?')} logical CPUs")
    print("\nbn_stat_loss forward+backward (per-sample, unbiased; median):")
    for (kind, shape, impl), t in sorted(med.items()):
        if kind == "bn_loss" and impl == "pyquant":
            e = med[(kind, shape, "eager")]
            print(f"  {'x'.join(map(str, shape)):>16}: pyquant {t * 1e3:8.1f} ms | eager {e * 1e3:8.1f} ms | "
                  f"speed-up {e / t:.2f}x (target >= 2x)")
    print("\nZeroQ iteration (forward + BN loss + backward + Adam; median):")
    for name in ("resnet20", "resnet18"):
        key = ("zeroq_iteration", name)
        if key + ("pyquant",) not in med:
            continue
        t, e, floor = (med[key + (i,)] for i in ("pyquant", "eager", "model-only"))
        print(f"  {name}: pyquant {t * 1e3:.1f} ms | eager hooks {e * 1e3:.1f} ms | speed-up {e / t:.2f}x"
              f"{' (target >= 1.3x)' if name == 'resnet20' else ''} | network alone {floor * 1e3:.1f} ms")
        print(f"    BN-loss share of the iteration: eager {max(e - floor, 0) / e * 100:.0f} % -> "
              f"pyquant {max(t - floor, 0) / t * 100:.0f} %")
    print("\nPeak RSS of a ZeroQ step (fresh process each; MiB after setup -> after 3 steps):")
    for name in args.rss_models:
        rows = {impl: peak_rss(name, impl, args.threads) for impl in ("pyquant", "eager")}
        print(f"  {name}: pyquant {rows['pyquant'][0]:.0f} -> {rows['pyquant'][1]:.0f} | "
              f"eager {rows['eager'][0]:.0f} -> {rows['eager'][1]:.0f}")


if __name__ == "__main__":
    main()
