"""Prints the int8 benchmark (bench_int8.py) as Markdown: GOP/s per variant, pyquant's ratio to the best
baseline of the same run, and the share of the measured VNNI / AMX peaks.

    python bench/report_int8.py bench/results/bench_int8_t2.json [bench/results/bench_int8_t1.json ...]
"""

import json
import sys


def report(path: str) -> None:
    with open(path) as f:
        d = json.load(f)
    vnni, amx = d["vnni_peak_gops"], d.get("amx_peak_gops", 0.0)
    print(f"\n### {d['threads']} thread(s), {d['rounds']} interleaved rounds, median (torch {d['torch']})\n")
    print(f"Measured peaks: VNNI (vpdpbusd loop) {vnni:.0f} GOP/s, AMX (tdpbusd loop) {amx:.0f} GOP/s.\n")
    print("| shape | pyquant u8 out GOP/s | pyquant f32 out GOP/s | best baseline | its GOP/s | ratio (u8 out) "
          "| % VNNI peak | % AMX peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name, c in d["cases"].items():
        ops = c["ops"]
        med = c["median_s"]
        base = {k: v for k, v in med.items() if not k.startswith("pyquant")}
        best = min(base, key=base.get)
        ours = ops / med["pyquant u8 out"] / 1e9
        ours_f = ops / med["pyquant f32 out"] / 1e9
        print(f"| {name} | {ours:.0f} | {ours_f:.0f} | {best} | {ops / base[best] / 1e9:.0f} | "
              f"{base[best] / med['pyquant u8 out']:.2f}x | {100 * ours / vnni:.0f} % | "
              f"{100 * ours / amx if amx else float('nan'):.0f} % |")
    print("\nAll variants (GOP/s, median):\n")
    names = list(next(iter(d["cases"].values()))["median_s"].keys())
    for name, c in d["cases"].items():
        row = ", ".join(f"{k} {c['ops'] / v / 1e9:.0f}" for k, v in sorted(c["median_s"].items(), key=lambda kv: kv[1]))
        print(f"- {name}: {row}")
    del names


if __name__ == "__main__":
    for p in sys.argv[1:] or ["bench/results/bench_int8_t2.json"]:
        report(p)
