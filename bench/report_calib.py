"""Prints the calibration benchmark medians and the ratios against their baselines.

    python bench/report_calib.py /tmp/bench_calib.json
"""

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    groups = defaultdict(dict)
    extra = {}
    for b in data["benchmarks"]:
        impl = b["params"].get("impl", b["name"])
        groups[b["group"]][impl] = b["stats"]["median"]
        extra[(b["group"], impl)] = b.get("extra_info", {})
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('cpu', {}).get('count', '?')} logical CPUs")
    for group, medians in groups.items():
        print(f"\n{group}")
        for impl, med in sorted(medians.items(), key=lambda kv: kv[1]):
            info = extra[(group, impl)]
            gbs = f"  {info['bytes'] / med / 1e9:6.2f} GB/s" if "bytes" in info else ""
            print(f"  {impl:32s} median {med * 1e3:9.2f} ms{gbs}")
        if "pyquant" in medians:
            for impl, med in medians.items():
                if impl != "pyquant" and not impl.startswith("pyquant"):
                    print(f"  speedup vs {impl}: {med / medians['pyquant']:.1f}x")
        if "pyquant_histogram_only" in medians and "read_pass_aminmax" in medians:
            print(f"  counting pass / one read of the tensor: "
                  f"{medians['pyquant_histogram_only'] / medians['read_pass_aminmax']:.2f}x the time")
        if "pyquant_per_channel" in medians:
            for impl in ("torch_histc_loop", "clone"):
                if impl in medians:
                    print(f"  pyquant_per_channel / {impl} time ratio: {medians['pyquant_per_channel'] / medians[impl]:.2f}")
    rs = [g for g in groups if g.startswith("range_search")]
    for g in rs:
        m = groups[g]
        best = min(v for k, v in m.items() if k.startswith("eager"))
        print(f"\n{g}: pyquant vs best eager baseline: {best / m['pyquant']:.1f}x (target >= 30x)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench_calib.json")
