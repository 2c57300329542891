"""int8 GEMM / conv benchmark (csrc/ops/int8_gemm): pyquant's int8_linear / int8_conv2d against torch._int_mm,
torch.ao.nn.quantized.Linear / Conv2d on the fbgemm, x86 and onednn engines, and fp32 matmul / conv2d,
all in the same run. Variants are interleaved round by round (the machine is shared) and the median
round is reported. Also measures the machine's AVX-512 VNNI peak with a tight vpdpbusd loop.

    PYTHONPATH=. python bench/bench_int8.py --threads 2 --out bench/results/bench_int8_t2.json
    PYTHONPATH=. python bench/bench_int8.py --threads 1 --out bench/results/bench_int8_t1.json
    python bench/report_int8.py bench/results/bench_int8_t2.json bench/results/bench_int8_t1.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from tqdm import tqdm

from pyquant import ops

GEMM_SHAPES = {
    # name: (M, N, K)
    "gemm 1024^3": (1024, 1024, 1024),
    "gemm 4096^3": (4096, 4096, 4096),
    "resnet50 fc (b256)": (256, 1000, 2048),
    "mobilenetv2 fc (b256)": (256, 1000, 1280),
    "resnet conv3x3 56x56x64 as gemm (b1)": (3136, 64, 576),
    "resnet conv3x3 14x14x256 as gemm (b1)": (196, 256, 2304),
}
CONV_SHAPES = {
    # name: (N, C, H, W, OC, k, stride, pad, groups)
    "conv3x3 32x64x56x56": (32, 64, 56, 56, 64, 3, 1, 1, 1),
    "conv3x3 s2 32x64x56x56->128": (32, 64, 56, 56, 128, 3, 2, 1, 1),
    "conv1x1 32x256x56x56->64": (32, 256, 56, 56, 64, 1, 1, 0, 1),
    "dwconv3x3 32x144x56x56": (32, 144, 56, 56, 144, 3, 1, 1, 144),
    # CIFAR ResNet-20/56 stages at batch 64: 16 / 32 output channels use the narrow VNNI panels
    "cifar conv3x3 64x16x32x32": (64, 16, 32, 32, 16, 3, 1, 1, 1),
    "cifar conv3x3 s2 64x16x32x32->32": (64, 16, 32, 32, 32, 3, 2, 1, 1),
    "cifar conv3x3 64x32x16x16": (64, 32, 16, 16, 32, 3, 1, 1, 1),
    "cifar conv3x3 64x64x8x8": (64, 64, 8, 8, 64, 3, 1, 1, 1),
}

# MobileNetV2 (224x224) 3x3 depthwise layers: name: (C, H, W, stride); run at batch 1 and 8.
DW_SHAPES = {
    "dw C=32 112x112 s1": (32, 112, 112, 1),
    "dw C=96 112x112 s2": (96, 112, 112, 2),
    "dw C=144 56x56 s1": (144, 56, 56, 1),
    "dw C=144 56x56 s2": (144, 56, 56, 2),
    "dw C=192 28x28 s1": (192, 28, 28, 1),
    "dw C=192 28x28 s2": (192, 28, 28, 2),
    "dw C=384 14x14 s1": (384, 14, 14, 1),
    "dw C=576 14x14 s1": (576, 14, 14, 1),
    "dw C=576 14x14 s2": (576, 14, 14, 2),
    "dw C=960 7x7 s1": (960, 7, 7, 1),
}
DW_BATCHES = (1, 8)

ENGINES = [e for e in ("fbgemm", "x86", "onednn") if e in torch.backends.quantized.supported_engines]

PEAK_SRC = r"""
#include <torch/extension.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <chrono>
// vpdpbusd throughput: 24 independent zmm accumulators (as the 6x64 micro-kernel) per thread, written
// in asm so the compiler can neither drop nor reorder the work.
__attribute__((target("avx512f,avx512vnni")))
static double vnni_loop_gops(int64_t iters, int64_t threads) {
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  {
    for (int64_t it = 0; it < iters; ++it) {
      asm volatile("vpdpbusd %%zmm30, %%zmm31, %%zmm0\nvpdpbusd %%zmm30, %%zmm31, %%zmm1\nvpdpbusd %%zmm30, %%zmm31, %%zmm2\nvpdpbusd %%zmm30, %%zmm31, %%zmm3\nvpdpbusd %%zmm30, %%zmm31, %%zmm4\nvpdpbusd %%zmm30, %%zmm31, %%zmm5\nvpdpbusd %%zmm30, %%zmm31, %%zmm6\nvpdpbusd %%zmm30, %%zmm31, %%zmm7\nvpdpbusd %%zmm30, %%zmm31, %%zmm8\nvpdpbusd %%zmm30, %%zmm31, %%zmm9\nvpdpbusd %%zmm30, %%zmm31, %%zmm10\nvpdpbusd %%zmm30, %%zmm31, %%zmm11\nvpdpbusd %%zmm30, %%zmm31, %%zmm12\nvpdpbusd %%zmm30, %%zmm31, %%zmm13\nvpdpbusd %%zmm30, %%zmm31, %%zmm14\nvpdpbusd %%zmm30, %%zmm31, %%zmm15\nvpdpbusd %%zmm30, %%zmm31, %%zmm16\nvpdpbusd %%zmm30, %%zmm31, %%zmm17\nvpdpbusd %%zmm30, %%zmm31, %%zmm18\nvpdpbusd %%zmm30, %%zmm31, %%zmm19\nvpdpbusd %%zmm30, %%zmm31, %%zmm20\nvpdpbusd %%zmm30, %%zmm31, %%zmm21\nvpdpbusd %%zmm30, %%zmm31, %%zmm22\nvpdpbusd %%zmm30, %%zmm31, %%zmm23" ::: "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm18","xmm19","xmm20","xmm21","xmm22","xmm23");
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(iters) * 24 * 64 * 2 * threads / s / 1e9;  // 64 multiply-adds per instruction
}
// 0 where the CPU lacks AVX-512 VNNI (the loop would be an illegal instruction). The module is built without
// -mavx512f so that nothing else in it (pybind11's init code) uses AVX-512 on such CPUs.
double vnni_peak_gops(int64_t iters, int64_t threads) {
  return __builtin_cpu_supports("avx512vnni") ? vnni_loop_gops(iters, threads) : 0.0;
}

// vpmaddwd throughput (the AVX2 path's multiply: 16 exact int16 products per instruction), 12 independent
// ymm results per iteration. 0 where the CPU lacks AVX2.
__attribute__((target("avx2")))
static double avx2_madd_loop_gops(int64_t iters, int64_t threads) {
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  {
    for (int64_t it = 0; it < iters; ++it) {
      asm volatile("vpmaddwd %%ymm14, %%ymm15, %%ymm0\nvpmaddwd %%ymm14, %%ymm15, %%ymm1\nvpmaddwd %%ymm14, %%ymm15, %%ymm2\nvpmaddwd %%ymm14, %%ymm15, %%ymm3\nvpmaddwd %%ymm14, %%ymm15, %%ymm4\nvpmaddwd %%ymm14, %%ymm15, %%ymm5\nvpmaddwd %%ymm14, %%ymm15, %%ymm6\nvpmaddwd %%ymm14, %%ymm15, %%ymm7\nvpmaddwd %%ymm14, %%ymm15, %%ymm8\nvpmaddwd %%ymm14, %%ymm15, %%ymm9\nvpmaddwd %%ymm14, %%ymm15, %%ymm10\nvpmaddwd %%ymm14, %%ymm15, %%ymm11" ::: "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11");
    }
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(iters) * 12 * 16 * 2 * threads / s / 1e9;  // 16 multiply-adds per instruction
}
double avx2_madd_peak_gops(int64_t iters, int64_t threads) {
  return __builtin_cpu_supports("avx2") ? avx2_madd_loop_gops(iters, threads) : 0.0;
}

// TDPBUSD throughput: 4 independent 16x16 accumulator tiles (as the 2x2 AMX blocks), per thread.
struct alignas(64) TileCfg { uint8_t palette, start, res[14]; uint16_t colsb[16]; uint8_t rows[16]; };
static const TileCfg kCfg = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};
__attribute__((target("amx-tile,amx-int8")))
double amx_peak_gops(int64_t iters, int64_t threads) {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 0.0;
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  {
    _tile_loadconfig(&kCfg);
    _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
    for (int64_t it = 0; it < iters; ++it) {
      _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
    }
    _tile_release();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(iters) * 4 * 16 * 16 * 64 * 2 * threads / s / 1e9;  // 16x16x64 multiply-adds per instruction
}
"""


def peaks(threads: int):
    """(VNNI, AMX, AVX2 vpmaddwd) peak GOP/s of this machine at `threads` threads (0 for what the CPU lacks)."""
    from torch.utils.cpp_extension import load_inline

    mod = load_inline("pyq_int8_peak", cpp_sources=PEAK_SRC, functions=["vnni_peak_gops", "amx_peak_gops", "avx2_madd_peak_gops"],
                      extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                      verbose=False)
    # The best of several runs: the machine is shared, so slower runs measure the other load, not the CPU.
    vnni = max(mod.vnni_peak_gops(20_000_000, threads) for _ in range(7))
    amx = max(mod.amx_peak_gops(2_000_000, threads) for _ in range(7))
    avx2 = max(mod.avx2_madd_peak_gops(20_000_000, threads) for _ in range(7))
    return vnni, amx, avx2


def timed(fn, min_time: float) -> float:
    """Seconds per call: enough calls to fill min_time."""
    fn()
    n, t = 1, 0.0
    while True:
        s = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - s
        if t >= min_time:
            return t / n
        n *= 2


def gemm_variants(M, N, K):
    g = torch.Generator().manual_seed(0)
    x_f = torch.rand(M, K, generator=g)
    w_f = torch.randn(N, K, generator=g) * 0.05
    b = torch.randn(N, generator=g) * 0.1
    w_scale = w_f.abs().amax(1) / 127
    w_q = torch.round(w_f / w_scale[:, None]).clamp(-127, 127).to(torch.int8)
    x_scale, x_zp = 1.0 / 255, 0
    x_q = torch.round(x_f / x_scale).clamp(0, 255).to(torch.uint8)
    out_scale, out_zp = 0.05, 128
    packed = ops.pack_int8_weight(w_q, w_scale)
    v = {
        "pyquant u8 out": lambda: ops.int8_linear(x_q, x_scale, x_zp, packed, b, out_scale, out_zp),
        "pyquant f32 out": lambda: ops.int8_linear(x_q, x_scale, x_zp, packed, b),
    }
    a_s8 = (x_q.to(torch.int16) - 128).to(torch.int8)
    w_t = w_q.t()  # [K, N], the column-major layout _int_mm's CPU path prefers
    v["torch._int_mm (int32 out)"] = lambda: torch._int_mm(a_s8, w_t)
    qx = torch.quantize_per_tensor(x_f, x_scale, x_zp, torch.quint8)
    qw = torch.quantize_per_channel(w_f, w_scale, torch.zeros(N, dtype=torch.long), 0, torch.qint8)
    for eng in ENGINES:
        torch.backends.quantized.engine = eng
        lin = torch.ao.nn.quantized.Linear(K, N)
        lin.set_weight_bias(qw, b)
        lin.scale, lin.zero_point = out_scale, out_zp

        def run(lin=lin, eng=eng):
            torch.backends.quantized.engine = eng
            return lin(qx)

        v[f"ao Linear {eng}"] = run
    v["fp32 matmul"] = lambda: torch.nn.functional.linear(x_f, w_f, b)
    return v, 2.0 * M * N * K


def conv_variants(n, c, h, w, oc, k, stride, pad, groups, fp32=True, f32_out=True):
    g = torch.Generator().manual_seed(0)
    x_f = torch.rand(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    w_f = torch.randn(oc, c // groups, k, k, generator=g) * 0.05
    b = torch.randn(oc, generator=g) * 0.1
    w_scale = w_f.abs().amax((1, 2, 3)) / 127
    w_q = torch.round(w_f / w_scale[:, None, None, None]).clamp(-127, 127).to(torch.int8)
    x_scale, x_zp = 1.0 / 255, 0
    x_q = torch.round(x_f / x_scale).clamp(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    out_scale, out_zp = 0.05, 128
    packed = ops.pack_int8_weight(w_q, w_scale, groups=groups)
    v = {
        "pyquant u8 out": lambda: ops.int8_conv2d(x_q, x_scale, x_zp, packed, b, stride, pad, 1, groups, out_scale,
                                                  out_zp),
    }
    if f32_out:
        v["pyquant f32 out"] = lambda: ops.int8_conv2d(x_q, x_scale, x_zp, packed, b, stride, pad, 1, groups)
    qx = torch.quantize_per_tensor(x_f, x_scale, x_zp, torch.quint8)
    qw = torch.quantize_per_channel(w_f, w_scale, torch.zeros(oc, dtype=torch.long), 0, torch.qint8)
    for eng in ENGINES:
        torch.backends.quantized.engine = eng
        conv = torch.ao.nn.quantized.Conv2d(c, oc, k, stride, pad, groups=groups)
        conv.set_weight_bias(qw, b)
        conv.scale, conv.zero_point = out_scale, out_zp

        def run(conv=conv, eng=eng):
            torch.backends.quantized.engine = eng
            return conv(qx)

        v[f"ao Conv2d {eng} (channels_last)"] = run
    if fp32:
        v["fp32 conv2d (channels_last)"] = lambda: torch.nn.functional.conv2d(x_f, w_f, b, stride, pad, 1, groups)
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1
    return v, 2.0 * n * oh * ow * oc * (c // groups) * k * k


def depthwise_variants(n, c, h, w, stride):
    """The 3x3 depthwise conv (padding 1, uint8 output) on pyquant and every torch.ao engine, and a copy of
    the input's bytes; also returns the bytes the conv moves (input + output + weight and per-channel
    epilogue constants) and the bytes the copy moves (read + write of the input)."""
    v, ops_count = conv_variants(n, c, h, w, c, 3, stride, 1, c, fp32=False, f32_out=False)
    x_copy = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    v["copy (x.clone())"] = lambda: x_copy.clone()
    oh = (h + 2 - 3) // stride + 1
    ow = (w + 2 - 3) // stride + 1
    moved = n * c * h * w + n * c * oh * ow + c * 9 + 12 * c
    return v, ops_count, moved, 2 * n * c * h * w


def run_depthwise(args) -> dict:
    cases = [(f"{name} b{n}", (n,) + s) for name, s in DW_SHAPES.items() for n in DW_BATCHES]
    cases = [c for c in cases if args.only in c[0]]
    out = {}
    for name, shape in tqdm(cases, desc="depthwise shapes"):
        variants, ops_count, moved, copy_moved = depthwise_variants(*shape)
        times = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, fn in variants.items():
                times[k].append(timed(fn, args.min_time))
        med = {k: statistics.median(t) for k, t in times.items()}
        ours = med["pyquant u8 out"]
        ao = {k: t for k, t in med.items() if k.startswith("ao ")}
        best = min(ao, key=ao.get)
        onednn = next((k for k in ao if "onednn" in k), best)
        gbps = moved / ours / 1e9
        copy_gbps = copy_moved / med["copy (x.clone())"] / 1e9
        out[name] = {
            "shape": shape, "ops": ops_count, "bytes_moved": moved, "copy_bytes_moved": copy_moved,
            "median_s": med, "rounds_s": times,
            "ratio_vs_onednn": med[onednn] / ours, "ratio_vs_best_ao": ao[best] / ours, "best_ao": best,
            "pyquant_gbps": gbps, "copy_gbps": copy_gbps, "fraction_of_copy_bandwidth": gbps / copy_gbps,
            "onednn_gbps": moved / med[onednn] / 1e9,
        }
        tqdm.write(f"{name}: pyquant {ours * 1e6:.0f} us, {gbps:.1f} GB/s ({100 * gbps / copy_gbps:.0f} % of a copy's "
                   f"{copy_gbps:.1f}); {med[onednn] / ours:.2f}x oneDNN, {ao[best] / ours:.2f}x best ao ({best})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=int(os.environ.get("PYQ_BENCH_THREADS", "2")))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per variant per round")
    ap.add_argument("--only", default="", help="substring filter on shape names")
    ap.add_argument("--skip-4096", action="store_true")
    ap.add_argument("--runs", type=int, default=1, help="--depthwise: repeat the whole set (medians over runs)")
    ap.add_argument("--depthwise", action="store_true",
                    help="MobileNetV2's depthwise shapes only: ratio to oneDNN and GB/s against a copy")
    ap.add_argument("--out", default=None, help="default bench/results/bench_int8.json "
                    "(bench_int8_depthwise.json with --depthwise)")
    args = ap.parse_args()
    if args.out is None:
        args.out = "bench/results/bench_int8_depthwise.json" if args.depthwise else "bench/results/bench_int8.json"
    torch.set_num_threads(args.threads)
    if args.depthwise:
        # --runs N repeats the whole set; each case keeps every run's figures and their median.
        runs = [run_depthwise(args) for _ in range(args.runs)]
        cases = {}
        for name in runs[0]:
            c = dict(runs[-1][name])
            for key in ("ratio_vs_onednn", "ratio_vs_best_ao", "pyquant_gbps", "copy_gbps", "onednn_gbps",
                        "fraction_of_copy_bandwidth"):
                vals = [r[name][key] for r in runs]
                c[key + "_runs"] = vals
                c[key + "_median"] = statistics.median(vals)
            cases[name] = c
        result = {"threads": args.threads, "rounds": args.rounds, "runs": args.runs, "torch": torch.__version__,
                  "cpu": platform.processor() or platform.machine(), "engines": ENGINES, "cases": cases}
        print("\nmedians over runs: ratio vs oneDNN, pyquant GB/s, copy GB/s")
        for name, c in cases.items():
            print(f"  {name}: {c['ratio_vs_onednn_median']:.2f}x, {c['pyquant_gbps_median']:.1f} GB/s, "
                  f"{c['copy_gbps_median']:.1f} GB/s ({100 * c['fraction_of_copy_bandwidth_median']:.0f} %)")
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        return
    cases = [(name, gemm_variants, s) for name, s in GEMM_SHAPES.items()]
    cases += [(name, conv_variants, s) for name, s in CONV_SHAPES.items()]
    cases = [c for c in cases if args.only in c[0] and not (args.skip_4096 and "4096" in c[0])]
    result = {
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "engines": ENGINES,
        "cases": {},
    }
    result["vnni_peak_gops"], result["amx_peak_gops"], result["avx2_vpmaddwd_peak_gops"] = peaks(args.threads)
    print(f"peaks ({args.threads} threads): VNNI {result['vnni_peak_gops']:.0f} GOP/s, "
          f"AMX {result['amx_peak_gops']:.0f} GOP/s, AVX2 vpmaddwd {result['avx2_vpmaddwd_peak_gops']:.0f} GOP/s")
    for name, make, shape in tqdm(cases, desc="shapes"):
        variants, ops_count = make(*shape)
        times = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, fn in variants.items():
                times[k].append(timed(fn, args.min_time))
        med = {k: statistics.median(t) for k, t in times.items()}
        result["cases"][name] = {"shape": shape, "ops": ops_count, "median_s": med, "rounds_s": times}
        best = min(v for k, v in med.items() if not k.startswith("pyquant"))
        tqdm.write(f"{name}: pyquant u8 {ops_count / med['pyquant u8 out'] / 1e9:.0f} GOP/s, "
                   f"best baseline {ops_count / best / 1e9:.0f} GOP/s, ratio {best / med['pyquant u8 out']:.2f}x")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
