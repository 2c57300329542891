"""Runs bench/bench_fake_quant.py once and prints the ratio table (markdown) used in the README.

Usage: python bench/report_fake_quant.py [--json path]
Ratios are speedups of pyquant over each baseline, from medians of the same run (2 threads).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's pyquant (in-place and editable builds)


def saved_bytes_per_element():
    """Bytes the autograd graph keeps for the backward, per input element."""
    import torch

    from pyquant import ops

    x = torch.randn(64, 256, requires_grad=True)
    scale, zp = torch.rand(256) + 0.01, torch.zeros(256, dtype=torch.int32)
    out = {}
    for name, fn in (
        ("pyquant", lambda: ops.fake_quant(x, scale, zp, -128, 127, 1)),
        ("aten", lambda: torch.fake_quantize_per_channel_affine(x, scale, zp, 1, -128, 127)),
    ):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn()
        # Count only what this op allocated for the graph (not x, scale, zp themselves).
        own = [t for t in saved if t.data_ptr() not in (x.data_ptr(), scale.data_ptr(), zp.data_ptr())]
        out[name] = sum(t.numel() * t.element_size() for t in own) / x.numel()
    return out


# DESIGN.md section 3 targets: (benchmark kind, baseline, least speed-up).
TARGETS = (
    ("forward", "aten", 3.0),
    ("forward", "copy", 0.8),
    ("fwd+bwd", "aten", 3.0),
    ("out=", "copy", 0.7),
    ("out=", "aten", 8.0),
)


def print_targets(groups):
    """The worst case of every target over all shapes, granularities and bit-widths of the run."""
    print("\n| target | worst case | speed-up | met |")
    print("|---|---|---:|---|")
    for kind, baseline, least in TARGETS:
        rows = [(g[baseline] / g["pyquant"], name) for name, g in groups.items()
                if name.split(" ")[0] == kind and baseline in g]
        if not rows:
            continue
        ratio, name = min(rows)
        print(f"| {kind} >= {least}x {baseline} | {name} | {ratio:.2f}x | {'yes' if ratio >= least else 'NO'} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="reuse an existing pytest-benchmark JSON instead of running")
    args = parser.parse_args()
    path = args.json
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "fake_quant.json")
        cmd = [sys.executable, "-m", "pytest", "-q", os.path.join(HERE, "bench_fake_quant.py"), "--benchmark-only",
               f"--benchmark-json={path}", "--benchmark-min-rounds=7", "-p", "no:cacheprovider"]
        subprocess.run(cmd, check=True)
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b["params"]["impl"]
        groups[b["group"]][impl] = b["stats"]["median"] * 1e3
    print("| benchmark | pyquant ms | ATen ms | vs ATen | eager ms | vs eager | copy ms | vs copy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for group in sorted(groups):
        g = groups[group]
        p = g["pyquant"]

        def col(name):
            return (f"{g[name]:.2f}", f"{g[name] / p:.2f}x") if name in g else ("-", "-")

        a, e, c = col("aten"), col("eager"), col("copy")
        print(f"| {group} | {p:.2f} | {a[0]} | {a[1]} | {e[0]} | {e[1]} | {c[0]} | {c[1]} |")
    print_targets(groups)
    mem = saved_bytes_per_element()
    print(f"\nbytes kept for backward per element: pyquant {mem['pyquant']:.3f}, ATen {mem['aten']:.3f}")
    print(f"(json: {path})")


if __name__ == "__main__":
    main()
