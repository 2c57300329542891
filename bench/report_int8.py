"""Prints the int8 benchmark (bench_int8.py) as Markdown: GOP/s per variant, pyquant's ratio to the best
baseline of the same run, and the share of the measured VNNI / AMX peaks.

    python bench/report_int8.py bench/results/bench_int8_t2.json [bench/results/bench_int8_t1.json ...]
    python bench/report_int8.py bench/results/bench_int8_depthwise.json     (bench_int8.py --depthwise)
"""

import json
import sys


def report_depthwise(d: dict) -> None:
    runs = d.get("runs", 1)
    print(f"\n### depthwise, {d['threads']} thread(s), {d['rounds']} interleaved rounds, medians of {runs} run(s) "
          f"(torch {d['torch']})\n")
    print("| shape | x oneDNN | runs | x best torch.ao | pyquant GB/s | oneDNN GB/s | copy GB/s | % of copy |")
    print("|---|---|---|---|---|---|---|---|")
    for name, c in d["cases"].items():
        def m(key):
            return c.get(key + "_median", c[key])
        runs_s = ", ".join(f"{r:.2f}" for r in c.get("ratio_vs_onednn_runs", [c["ratio_vs_onednn"]]))
        print(f"| {name} | {m('ratio_vs_onednn'):.2f} | {runs_s} | {m('ratio_vs_best_ao'):.2f} | "
              f"{m('pyquant_gbps'):.1f} | {m('onednn_gbps'):.1f} | {m('copy_gbps'):.1f} | "
              f"{100 * m('fraction_of_copy_bandwidth'):.0f} % |")


def _share(gops: float, peak: float) -> str:
    """gops as a percentage of a measured peak; "n/a" where the CPU lacks that unit (peak 0)."""
    return f"{100 * gops / peak:.0f} %" if peak else "n/a"


def report(path: str) -> None:
    with open(path) as f:
        d = json.load(f)
    if d["cases"] and "copy_gbps" in next(iter(d["cases"].values())):
        return report_depthwise(d)
    vnni, amx, avx2 = d["vnni_peak_gops"], d.get("amx_peak_gops", 0.0), d.get("avx2_vpmaddwd_peak_gops", 0.0)
    print(f"\n### {d['threads']} thread(s), {d['rounds']} interleaved rounds, median (torch {d['torch']})\n")
    print(f"Measured peaks: VNNI (vpdpbusd loop) {vnni:.0f} GOP/s, AMX (tdpbusd loop) {amx:.0f} GOP/s, "
          f"AVX2 (vpmaddwd loop) {avx2:.0f} GOP/s.\n")
    print("| shape | pyquant u8 out GOP/s | pyquant f32 out GOP/s | best baseline | its GOP/s | ratio (u8 out) "
          "| % VNNI peak | % AMX peak | % AVX2 peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, c in d["cases"].items():
        ops = c["ops"]
        med = c["median_s"]
        base = {k: v for k, v in med.items() if not k.startswith("pyquant")}
        best = min(base, key=base.get)
        ours = ops / med["pyquant u8 out"] / 1e9
        ours_f = ops / med["pyquant f32 out"] / 1e9
        print(f"| {name} | {ours:.0f} | {ours_f:.0f} | {best} | {ops / base[best] / 1e9:.0f} | "
              f"{base[best] / med['pyquant u8 out']:.2f}x | {_share(ours, vnni)} | {_share(ours, amx)} | "
              f"{_share(ours, avx2)} |")
    print("\nAll variants (GOP/s, median):\n")
    names = list(next(iter(d["cases"].values()))["median_s"].keys())
    for name, c in d["cases"].items():
        row = ", ".join(f"{k} {c['ops'] / v / 1e9:.0f}" for k, v in sorted(c["median_s"].items(), key=lambda kv: kv[1]))
        print(f"- {name}: {row}")
    del names


if __name__ == "__main__":
    for p in sys.argv[1:] or ["bench/results/bench_int8_t2.json"]:
        report(p)
