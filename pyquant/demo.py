"""`pyquant demo` (the default job, run by a bare `pyquant`), `pyquant bench` and `pyquant info`.

The default job needs nothing downloaded and no data folder: it trains (once, then cached) the small BN CNN
``digits-cnn`` on scikit-learn's bundled real 8x8 handwritten digits, quantizes it **data-free** with the ``best``
recipe (synthetic ZeroQ data from its BatchNorm statistics; no real image is used for calibration) at W8A8 and W4A4,
converts both to real int8 (``pyquant.int8.convert``), evaluates FP32, fake-quant and int8 on the 450 held-out digits
and writes the models, a manifest and a Markdown report with plots per configuration.

``quantize_weights_`` and ``ActivationQuantizer`` (plain min-max fake quantization) are kept for bench scripts.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from pyquant import ops

DEFAULT_OUT = "pyquant-out"
CONFIGS = ((8, 8), (4, 4))


def add_demo_parser(sub):
    from pyquant.cli import add_common

    p = sub.add_parser("demo", help="the default job: digits CNN, data-free `best` at W8A8 and W4A4, int8, report",
                       description="Train (or load from the cache) digits-cnn, quantize it data-free with the best "
                                   "recipe at W8A8 and W4A4, convert to int8, evaluate on the held-out digits and "
                                   "write a report.")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--recipe", default="best")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=None, help="synthetic samples (recipe default: 256)")
    p.add_argument("--iterations", type=int, default=None, help="synthesis iterations (recipe default: 200)")
    add_common(p)
    p.set_defaults(run=run)


def add_bench_parser(sub):
    b = sub.add_parser("bench", help="the kernel microbenchmarks, quickly: pyquant vs the named baseline",
                       description="Times each pyquant kernel against its baseline in the same run (medians) and "
                                   "prints the ratio table. Shapes are smaller than bench/'s (seconds, not minutes).")
    b.add_argument("--repeat", type=int, default=10, help="timed calls per case (median reported)")
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    b.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto: the CPU or the CUDA kernels (auto: cuda "
                                                    "when the build has CUDA kernels and a GPU is present)")
    b.add_argument("--json", action="store_true", help="print the rows as JSON on stdout (the table goes to stderr)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(run=run_bench)


def add_info_parser(sub):
    i = sub.add_parser("info", help="version, torch, CUDA kernels and archs, CPU ISA in use, threads")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--quiet", action="store_true", help="one line: version, torch, CUDA kernels, CPU kernels")
    i.set_defaults(run=run_info)


# ------------------------------------------------------------------------------------------------- the default job

def run(args) -> int:
    from pyquant.cli import human_output, pick_device, prepare_out, print_json, public, quantize_job
    from pyquant.cli import evaluate, UsageError
    import pyquant
    from pyquant.data.digits import load_digits_split
    from pyquant.models.digits_cnn import INPUT_SHAPE, _weights_path, cache_dir, digits_cnn

    # 8x8 inputs: threads only add synchronisation (the synthesis ran 10x slower on 2 busy cores than on one)
    torch.set_num_threads(args.threads or 1)
    if args.recipe not in pyquant.RECIPES:
        raise UsageError(f"--recipe {args.recipe!r}: choose one of {', '.join(sorted(pyquant.RECIPES))}")
    out = prepare_out(args.out)
    device = pick_device(args.device)
    t_start = time.perf_counter()
    summary = {"model": "digits-cnn", "recipe": args.recipe, "configs": []}
    with human_output(args):
        info = pyquant.build_info()
        print(f"pyquant {info['version']} | torch {info['torch_runtime']} | CPU kernels: {info['cpu_isa']} | "
              f"CUDA kernels: {'yes' if info['cuda'] else 'no'} | device: {device} | threads: {torch.get_num_threads()}")
        cached = os.path.isfile(_weights_path(cache_dir()))
        t0 = time.perf_counter()
        model = digits_cnn(progress=not args.quiet)
        how = f"loaded from {_weights_path(cache_dir())}" if cached else \
            f"trained in {time.perf_counter() - t0:.1f} s, cached in {_weights_path(cache_dir())}"
        x, y = load_digits_split("test")
        fp32 = evaluate(model, x, y, torch.device("cpu"), quiet=True)
        print(f"digits-cnn ({how}); scikit-learn digits: 1347 training, {x.shape[0]} held-out real 8x8 images; "
              f"FP32 top-1 {fp32:.2f} %")
        print(f"Quantizing data-free (recipe {args.recipe}: calibration data synthesized from BatchNorm statistics, "
              f"no real image used) ...")
        overrides = {}
        if args.num_samples:
            overrides["num_samples"] = args.num_samples
        if args.iterations:
            overrides["data_iterations"] = args.iterations
        recipe = pyquant.recipes.get_recipe(args.recipe).replace(**overrides)
        calib, calib_steps = None, []
        if recipe.data is not None:
            # one synthetic set for both bit-widths: it depends on the FP32 network and the seed only
            generator = {"zeroq": pyquant.distill.zeroq, "dsg": pyquant.distill.dsg, "aac": pyquant.distill.aac}
            t0 = time.perf_counter()
            calib = generator[recipe.data](model, recipe.num_samples, INPUT_SHAPE,
                                           batch_size=min(recipe.data_batch_size, recipe.num_samples),
                                           iterations=recipe.data_iterations, seed=args.seed,
                                           progress=not args.quiet, **recipe.data_kwargs)
            calib_steps = [{"step": f"distill:{recipe.data} (shared by {len(CONFIGS)} configurations)",
                            "seconds": time.perf_counter() - t0,
                            "detail": f"{recipe.num_samples} samples, {recipe.data_iterations} iterations"}]
            print(f"{recipe.num_samples} synthetic {recipe.data} images in {calib_steps[0]['seconds']:.1f} s")
        rows = []
        for w_bits, a_bits in CONFIGS:
            cfg_out = prepare_out(os.path.join(out, f"W{w_bits}A{a_bits}"))
            r = quantize_job(model, input_shape=INPUT_SHAPE, recipe=args.recipe, w_bits=w_bits, a_bits=a_bits,
                             device=device, data=("digits", x, y), out=cfg_out, int8=True, seed=args.seed,
                             overrides=overrides, quiet=args.quiet, fp32_top1=fp32, calib=calib,
                             calib_steps=calib_steps,
                             manifest_extra={"model": "digits-cnn", "weights": _weights_path(cache_dir()),
                                             "mean": None, "std": None},
                             title=f"digits-cnn: {args.recipe}, W{w_bits}A{a_bits}")
            rows.append(r)
            summary["configs"].append(public(r))
        total = time.perf_counter() - t_start
        shared = sum(st["seconds"] for st in calib_steps)
        lines = [f"{'config':<8}{'FP32 %':>8}{'fake-quant %':>14}{'int8 %':>8}{'time s':>8}  report"]
        for r in rows:
            a = r["accuracy"]
            lines.append(f"W{r['w_bits']}A{r['a_bits']:<6}{a['FP32']:>8.2f}{a['fake-quant']:>14.2f}{a['int8']:>8.2f}"
                         f"{r['seconds'] - shared:>8.1f}  {r['report']}")
        print("\n".join(lines))
        if shared:
            print(f"(time: quantize + int8 + evaluation + report per configuration; the synthetic data, made once "
                  f"for both, took {shared:.1f} s)")
        print(f"total {total:.1f} s. Your own model: pyquant quantize MODEL --checkpoint FILE --eval DATA --out DIR")
        summary["seconds"] = total
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write("# pyquant default job: digits-cnn, data-free\n\n```\n" + "\n".join(lines) +
                    f"\n```\n\nTotal {total:.1f} s. Reports: " +
                    ", ".join(f"[W{r['w_bits']}A{r['a_bits']}](W{r['w_bits']}A{r['a_bits']}/report.md)" for r in rows)
                    + "\n")
    if args.json:
        print_json(summary)
    return 0


# ------------------------------------------------------------------------------------------------ kernel benchmarks

def quantize_weights_(model: nn.Module, bits: int) -> None:
    """Symmetric per-output-channel min-max weight quantization, in place (fake-quant)."""
    qmax = 2 ** (bits - 1) - 1
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.data
            amax = w.abs().flatten(1).amax(1).clamp_min(1e-8)
            scale = amax / qmax
            ops.fake_quant(w, scale, torch.zeros_like(scale, dtype=torch.int32), -qmax, qmax, axis=0, out=w)


class ActivationQuantizer:
    """Per-tensor asymmetric min-max activation fake-quant on every conv/linear input (forward pre-hooks)."""

    def __init__(self, model: nn.Module, bits: int, calib: torch.Tensor):
        self.bits = bits
        self.ranges = {}
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hooks = [m.register_forward_pre_hook(self._observe) for m in layers]
        with torch.no_grad():
            model(calib)
        for h in hooks:
            h.remove()
        self.hooks = [m.register_forward_pre_hook(self._quantize) for m in layers]

    def _observe(self, module, args):
        x = args[0]
        lo, hi = self.ranges.get(module, (0.0, 0.0))
        self.ranges[module] = (min(lo, x.min().item()), max(hi, x.max().item()))

    def _quantize(self, module, args):
        lo, hi = self.ranges[module]
        qmax = 2**self.bits - 1
        scale = max(hi - lo, 1e-8) / qmax
        zp = min(max(int(round(-lo / scale)), 0), qmax)
        return (ops.fake_quant(args[0], scale, zp, 0, qmax),)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    noise = (ref - approx).pow(2).mean().clamp_min(1e-30)
    return float(10 * torch.log10(ref.pow(2).mean() / noise))


def time_call(fn, repeat=20):
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return samples[len(samples) // 2]


def time_interleaved(a, b, repeat: int, sync=lambda: None):
    """Medians of ``a`` and ``b`` timed alternately (after one warm-up call each), so both see the same machine
    load: on a shared machine, timing one and then the other skews the ratio. ``sync``: waits for the device
    (torch.cuda.synchronize: CUDA kernels run asynchronously)."""
    a(), b()
    sync()
    ta, tb = [], []
    for _ in range(max(1, repeat)):
        for fn, samples in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - t0)
    ta.sort(), tb.sort()
    return ta[len(ta) // 2], tb[len(tb) // 2]


def bench_cases(device: torch.device = torch.device("cpu")):
    """(name, pyquant callable, baseline name, baseline callable) on shapes that take milliseconds, with the inputs
    on ``device`` (the same values on every device: drawn on the CPU)."""
    from pyquant import reference

    g = torch.Generator().manual_seed(0)

    def on(t):
        return t.to(device)

    x = on(torch.randn(32, 128, 28, 28, generator=g))
    scale = on(torch.rand(128, generator=g) * 0.05 + 0.01)
    zp = on(torch.randint(0, 255, (128,), dtype=torch.int32, generator=g))
    buf = torch.empty_like(x)
    xg = x.clone().requires_grad_()
    cases = [
        ("fake_quant per-channel 8b 32x128x28x28", lambda: ops.fake_quant(x, scale, zp, 0, 255, axis=1),
         "ATen fake_quantize_per_channel_affine", lambda: torch.fake_quantize_per_channel_affine(x, scale, zp, 1, 0, 255)),
        ("fake_quant out= (same tensor)", lambda: ops.fake_quant(x, scale, zp, 0, 255, axis=1, out=buf),
         "copy into a buffer", lambda: buf.copy_(x)),
        ("fake_quant fwd+bwd", lambda: torch.autograd.grad(ops.fake_quant(xg, scale, zp, 0, 255, axis=1), xg, x),
         "ATen fwd+bwd", lambda: torch.autograd.grad(torch.fake_quantize_per_channel_affine(xg, scale, zp, 1, 0, 255),
                                                     xg, x)),
    ]
    w = on(torch.randn(256, 1152, generator=g))
    cases.append(("range_search 256x1152 per-channel K=100", lambda: ops.range_search(w, -127, 127, axis=0),
                  "eager grid search (chunked)", lambda: reference.grid_search_eager_chunked(w, -127, 127, axis=0)))
    a = on(torch.randn(64, 64, 16, 16, generator=g)).requires_grad_()
    rm, rv = on(torch.randn(64, generator=g)), on(torch.rand(64, generator=g) + 0.5)
    cases.append(("bn_stat_loss fwd+bwd 64x64x16x16", lambda: ops.bn_stat_loss(a, rm, rv, per_sample=True,
                                                                               unbiased=True).backward(),
                  "eager var_mean + autograd", lambda: reference.bn_stat_loss(a, rm, rv, per_sample=True,
                                                                               unbiased=True).backward()))
    m, k, n = 256, 1024, 1024
    xq = on(torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g))
    wq = on(torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g))
    ws = on(torch.rand(n, generator=g) * 0.01 + 0.001)
    packed = ops.pack_int8_weight(wq, ws)
    xf, wf = on(torch.randn(m, k, generator=g)), on(torch.randn(n, k, generator=g))
    xs8, wt = (xq.to(torch.int16) - 128).to(torch.int8), wq.t().contiguous()
    cases.append((f"int8_linear {m}x{k}x{n}", lambda: ops.int8_linear(xq, 0.02, 128, packed),
                  "torch._int_mm (s8 x s8 -> s32)", lambda: torch._int_mm(xs8, wt)))
    cases.append((f"int8_linear {m}x{k}x{n}", lambda: ops.int8_linear(xq, 0.02, 128, packed),
                  "float32 F.linear", lambda: torch.nn.functional.linear(xf, wf)))
    xc = on(torch.randint(0, 256, (8, 64, 28, 28), dtype=torch.uint8, generator=g))
    wc = on(torch.randint(-127, 128, (64, 64, 3, 3), dtype=torch.int8, generator=g))
    pc = ops.pack_int8_weight(wc, on(torch.rand(64, generator=g) * 0.01 + 0.001))
    xcf, wcf = on(torch.randn(8, 64, 28, 28, generator=g)), on(torch.randn(64, 64, 3, 3, generator=g))
    cases.append(("int8_conv2d 3x3 8x64x28x28", lambda: ops.int8_conv2d(xc, 0.02, 128, pc, padding=1),
                  "float32 F.conv2d", lambda: torch.nn.functional.conv2d(xcf, wcf, padding=1)))
    return cases


def run_bench(args) -> int:
    from tqdm.auto import tqdm

    from pyquant.cli import human_output, pick_device, print_json, set_threads

    set_threads(args)
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    with human_output(args):
        for name, ours, base_name, base in tqdm(bench_cases(device), desc="bench", unit="case", disable=args.quiet,
                                                leave=False):
            t_ours, t_base = time_interleaved(ours, base, args.repeat, sync)
            rows.append({"case": name, "device": str(device), "pyquant_ms": t_ours * 1e3, "baseline": base_name, "baseline_ms": t_base * 1e3,
                         "speedup": t_base / t_ours})
        info = __import__("pyquant").build_info()
        where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else
                 f"{torch.get_num_threads()} threads, CPU variant {info['cpu_isa']}")
        print(f"pyquant kernels vs baselines (median of {args.repeat}, {where}; ratio = baseline time / pyquant "
              f"time, > 1 means pyquant is faster)")
        print(f"| {'case':<40} | {'pyquant ms':>10} | {'baseline':<36} | {'baseline ms':>11} | {'ratio':>6} |")
        print(f"|{'-' * 42}|{'-' * 11}:|{'-' * 38}|{'-' * 12}:|{'-' * 7}:|")
        for r in rows:
            print(f"| {r['case']:<40} | {r['pyquant_ms']:>10.2f} | {r['baseline']:<36} | {r['baseline_ms']:>11.2f} | "
                  f"{r['speedup']:>5.2f}x |")
    if args.json:
        print_json(rows)
    return 0


def run_info(args) -> int:
    import importlib.util
    import platform

    import pyquant
    from pyquant.cli import print_json

    info = dict(pyquant.build_info())
    info["threads"] = torch.get_num_threads()
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["python"] = platform.python_version()
    info["machine"] = platform.machine()
    info["optional"] = {m: importlib.util.find_spec(m) is not None
                        for m in ("sklearn", "torchvision", "onnx", "onnxruntime", "matplotlib", "PIL")}
    from pyquant.models.digits_cnn import cache_dir

    info["cache_dir"] = cache_dir()
    if args.json:
        print_json(info)
        return 0
    if args.quiet:
        print(f"pyquant {info['version']} | torch {info['torch_runtime']} | CUDA kernels: "
              f"{'yes' if info['cuda'] else 'no'} | CPU kernels: {info['cpu_isa']}")
        return 0
    print(f"pyquant      {info['version']}")
    print(f"torch        {info['torch_runtime']} (extension built against {info['torch_built']})")
    print(f"CUDA kernels {'yes, CUDA ' + str(info['cuda_version']) + ', archs ' + str(info['cuda_archs']) if info['cuda'] else 'no (CPU build)'}")
    print(f"GPU          {info['gpu'] or 'none visible'}")
    print(f"CPU kernels  {info['cpu_isa']} in use (compiled: {', '.join(info['cpu_isas_compiled'])}; "
          f"ATEN_CPU_CAPABILITY lowers it)")
    print(f"threads      {info['threads']}")
    print(f"python       {info['python']} on {info['machine']}")
    print(f"optional     " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["optional"].items()))
    print(f"cache        {info['cache_dir']}")
    return 0
