"""The `pyquant` command: `quantize` (your model), `eval` (a saved quantized model on data), `distill` (synthetic
data at scale), `bench` (kernel microbenchmarks), `info` (build and machine) and `demo`, the default job (run by a
bare `pyquant`). Each subcommand registers itself through add_parser(subparsers) and runs as args.run(args).

Bad input (a missing file, an unknown model, bits out of range, a checkpoint that does not fit, an input shape the
model does not take, an unwritable --out) ends with exit code 2 and one line naming the problem; PYQUANT_DEBUG=1
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

# (subcommand, module providing add_<subcommand>_parser(subparsers) or add_parser(subparsers); the parser's
# defaults carry run(args))
SUBCOMMANDS = [
    ("demo", "pyquant.demo"),
    ("quantize", "pyquant.cli"),
    ("eval", "pyquant.cli"),
    ("distill", "pyquant.distill.cli"),
    ("bench", "pyquant.demo"),
    ("info", "pyquant.demo"),
]


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------------------- parsing

def bits_arg(text: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must be an integer in 2..8, got {text!r}") from None
    if not 2 <= bits <= 8:
        raise argparse.ArgumentTypeError(f"bits must be in 2..8, got {bits}")
    return bits


def avg_bits_arg(text: str) -> float:
    try:
        bits = float(text)
    except ValueError:
        bits = float("nan")
    if not 2 <= bits <= 8:
        raise argparse.ArgumentTypeError(f"average bits must be a number in 2..8, got {text!r}")
    return bits


def shape_arg(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"input shape must be positive integers like 3,224,224, got {text!r}")
    return shape


def floats_arg(text: str) -> List[float]:
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}") \
            from None


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when the build has CUDA kernels and "
                                                    "a GPU is present)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or step lines")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout (the "
                                                      "human-readable output goes to stderr)")


def add_eval_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", dest="eval_data", default=None, metavar="DATA",
                   help="evaluation data: an image folder (one sub-folder per class), an .npz with x and y, or "
                        "'digits' (default: the model's own test set when it has one)")
    p.add_argument("--mean", type=floats_arg, default=None, help="per-channel mean of the model's input "
                                                                  "normalisation (images scaled to [0, 1] first)")
    p.add_argument("--std", type=floats_arg, default=None, help="per-channel std of the input normalisation")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate on the first N images only")
    p.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")


def add_quantize_parser(sub) -> None:
    from pyquant.recipes import RECIPES  # already loaded: importing pyquant.cli runs pyquant/__init__

    p = sub.add_parser("quantize", help="quantize a model data-free, convert it to int8, evaluate it, write a report",
                       description="Quantize MODEL data-free with a recipe, convert it to int8, evaluate FP32, "
                                   "fake-quant and int8 side by side when data is given, and write models + report "
                                   "to --out.")
    p.add_argument("model", metavar="MODEL", help="a built-in name (digits-cnn, resnet20, resnet32, resnet44, "
                                                  "resnet56, mobilenet-cifar), a torchvision model name, or "
                                                  "package.module:function returning an nn.Module")
    p.add_argument("--recipe", default="best", help=f"{', '.join(RECIPES)} (default best)")
    p.add_argument("--w-bits", type=bits_arg, default=8, help="weight bits, 2..8 (default 8)")
    p.add_argument("--a-bits", type=bits_arg, default=8, help="activation bits, 2..8 (default 8)")
    p.add_argument("--first-last-bits", type=bits_arg, default=None, help="bits of the first and last layer")
    p.add_argument("--input-bits", type=bits_arg, default=None,
                   help="bits of the network-input quantizer (default: --a-bits; 8 = the model's 8-bit pixels)")
    p.add_argument("--avg-bits", type=avg_bits_arg, default=None, metavar="B",
                   help="mixed-precision weights: ZeroQ's Pareto allocation of 2/4/8 bit per layer with at most B "
                        "bits per weight on average (needs a recipe that synthesizes data); the report plots the "
                        "frontier")
    p.add_argument("--checkpoint", default=None, help="state dict file (.pt/.pth/.th via torch.load(weights_only="
                                                      "True), or .safetensors)")
    p.add_argument("--input-shape", type=shape_arg, default=None, help="C,H,W of one input (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=positive_int, default=None, help="synthetic samples (recipe default)")
    p.add_argument("--iterations", type=positive_int, default=None, help="synthesis iterations (recipe default)")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="calibrate on synthetic data made beforehand by `pyquant distill --out DIR` (e.g. under "
                        "torchrun on many GPUs) instead of synthesizing it here")
    p.add_argument("--out", default=None, help="output folder for the models, manifest and report")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="convert to real int8 and evaluate/save it (default: on; --no-int8 to skip)")
    p.add_argument("--onnx", action="store_true", help="also export the int8 model as QDQ ONNX")
    add_eval_data(p)
    add_common(p)
    p.set_defaults(run=run_quantize)


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate the models saved by `pyquant quantize --out DIR` on data",
                       description="Top-1 of the fake-quant and int8 models in DIR (written by pyquant quantize) on "
                                   "--eval DATA (default: the data quantize evaluated on), FP32 beside with --fp32.")
    e.add_argument("dir", metavar="DIR")
    e.add_argument("--fp32", default=None, metavar="MODEL", help="also evaluate this FP32 model (as for pyquant "
                                                                 "quantize: a built-in name, a torchvision name or "
                                                                 "package.module:function)")
    e.add_argument("--checkpoint", default=None, help="weights of --fp32 MODEL")
    add_eval_data(e)
    add_common(e)
    e.set_defaults(run=run_eval)


# ---------------------------------------------------------------------------------------------------------- helpers

def pick_device(name: str):
    import torch

    import pyquant

    has_cuda_kernels = bool(pyquant.build_info().get("cuda"))
    if name == "auto":
        return torch.device("cuda" if has_cuda_kernels and torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not has_cuda_kernels:
            raise UsageError("--device cuda: this pyquant build has no CUDA kernels (rebuild with a CUDA torch and "
                             "FORCE_CUDA=1)")
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no GPU is visible to torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: use cpu, cuda, cuda:N or auto")
    return device


def prepare_out(path: Optional[str]) -> Optional[str]:
    """Creates ``path`` and checks it is writable before any long work starts."""
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".pyquant-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"--out {path} is not writable: {err.strerror or err}") from None
    return path


def check_input_shape(model, shape, device) -> None:
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros((1,) + tuple(shape), device=device))
    except Exception as err:  # any failure of the forward means the shape does not fit
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--input-shape {','.join(map(str, shape))} does not fit the model: {msg}") from None


def evaluate(model, x, y, device, *, batch_size: int = 256, desc: str = "eval", quiet: bool = False) -> float:
    """Top-1 in percent, batch by batch on ``device`` (tqdm when it takes over a second)."""
    import torch
    from tqdm.auto import tqdm

    correct = 0
    with torch.no_grad():
        for i in tqdm(range(0, x.shape[0], batch_size), desc=desc, unit="batch", disable=quiet, delay=1.0,
                      leave=False):
            out = model(x[i:i + batch_size].to(device))
            correct += int((out.argmax(1).cpu() == y[i:i + batch_size]).sum())
    return 100.0 * correct / max(1, x.shape[0])


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    import torch

    import pyquant

    return {"pyquant": pyquant.__version__, "torch": torch.__version__, "build": pyquant.build_info()}


class Timer:
    """Wall time of the command's own steps (pyquant.quantize times its steps itself)."""

    def __init__(self):
        self.log: List[dict] = []

    @contextlib.contextmanager
    def __call__(self, step: str, detail: str = ""):
        t0 = time.perf_counter()
        yield
        self.log.append({"step": step, "seconds": time.perf_counter() - t0, "detail": detail})


def load_data(spec: Optional[str], shape, mean, std, args, info=None, *, explicit: bool = False,
              limit: Optional[int] = None):
    """Evaluation data from --eval (or the model's default), or None; normalisation from --mean/--std, else the
    model's (``mean``/``std``; ``explicit``: they were given by flags, so float data get them too, as
    :func:`pyquant.data.load_eval_data`'s ``normalize_float``). ``limit``: used when --limit is not given."""
    from pyquant.data import load_eval_data

    spec = spec or (info.default_eval if info is not None else None)
    if spec is None:
        return None
    flags = args.mean is not None or args.std is not None
    mean = args.mean if flags else mean
    std = args.std if flags else std
    try:
        x, y = load_eval_data(spec, shape, mean, std, normalize_float=flags or explicit,
                              limit=args.limit or limit)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except ValueError as err:
        raise UsageError(str(err)) from None
    return spec, x, y


# --------------------------------------------------------------------------------------------------- the pipeline

def quantize_job(model, *, input_shape, recipe: str, w_bits: int, a_bits: int, device, data=None, out=None,
                 int8: Optional[bool] = True, onnx: bool = False, seed: int = 0, overrides: Optional[dict] = None,
                 quiet: bool = False, title: Optional[str] = None, batch_size: int = 256, manifest_extra=None,
                 fp32_top1: Optional[float] = None, calib=None, calib_steps: Optional[List[dict]] = None) -> dict:
    """quantize -> (int8 convert) -> evaluate FP32 / fake-quant / int8 on ``data`` = (spec, x, y) -> write models,
    manifest and report to ``out``. ``int8=None``: convert when the graph allows (a warning otherwise);
    ``True``: a conversion failure is an error. ``calib``: calibration inputs made beforehand (e.g. one synthetic
    set shared by several bit-widths), with ``calib_steps`` their timed steps. Returns the results as a plain dict."""
    import torch

    import pyquant

    timer = Timer()
    timer.log.extend(calib_steps or [])
    model = model.to(device)
    result: Dict = {"recipe": recipe, "w_bits": w_bits, "a_bits": a_bits, "input_shape": list(input_shape),
                    "device": str(device), "seed": seed}
    accuracy: Dict[str, float] = {}
    if data is not None:
        spec, x, y = data
        result["eval"] = {"data": spec, "images": int(x.shape[0])}
        if fp32_top1 is None:
            with timer("eval:fp32", f"{x.shape[0]} images"):
                fp32_top1 = evaluate(model, x, y, device, batch_size=batch_size, desc="eval FP32", quiet=quiet)
        accuracy["FP32"] = fp32_top1
    qmodel = pyquant.quantize(model, recipe, w_bits=w_bits, a_bits=a_bits, input_shape=tuple(input_shape), seed=seed,
                              progress=not quiet, data=calib, **(overrides or {}))
    if data is not None:
        with timer("eval:fake-quant", f"{x.shape[0]} images"):
            accuracy["fake-quant"] = evaluate(qmodel, x, y, device, batch_size=batch_size, desc="eval fake-quant",
                                              quiet=quiet)
    q8 = None
    if int8 or int8 is None:
        try:
            with timer("int8:convert"):
                q8 = pyquant.int8.convert(qmodel)
        except ValueError as err:
            if int8:
                raise UsageError(f"--int8: {err}") from None
            print(f"pyquant: int8 conversion skipped: {err}", file=sys.stderr)
            result["int8_skipped"] = str(err)
    if q8 is not None and data is not None:
        with timer("eval:int8", f"{x.shape[0]} images"):
            accuracy["int8"] = evaluate(q8, x, y, device, batch_size=batch_size, desc="eval int8", quiet=quiet)
    result["accuracy"] = accuracy
    report = qmodel.quant_report
    result["layers"] = [{"name": r.name, "weight_bits": r.weight_bits, "input_bits": r.input_bits,
                         "weight_clip": r.weight_clip, "input_range": r.input_range,
                         "weight_sqnr_db": r.weight_sqnr_db, "output_sqnr_db": r.output_sqnr_db}
                        for r in report.layers]
    if report.mixed_precision:
        result["mixed_precision"] = report.mixed_precision
    if out is not None:
        files = {}
        with timer("save"):
            from pyquant.quant import serialize

            fq_path = os.path.join(out, "fake_quant.safetensors")
            fq_meta = {"recipe": recipe, "w_bits": w_bits, "a_bits": a_bits}
            try:
                serialize.save(qmodel, fq_path, metadata=fq_meta)  # the graph too: pyquant eval reloads it
            except ValueError as err:
                from safetensors.torch import save_file

                print(f"pyquant: the fake-quant graph cannot be stored ({err}); fake_quant.safetensors holds its "
                      f"state dict only", file=sys.stderr)
                result["fake_quant_graph_skipped"] = str(err)
                state = {k: v.detach().cpu().contiguous().clone() for k, v in qmodel.state_dict().items()}
                save_file(state, fq_path, metadata={serialize.METADATA_KEY: json.dumps(fq_meta)})
            files["fake_quant"] = "fake_quant.safetensors"
            if q8 is not None:
                pyquant.int8.save(q8.cpu() if device.type != "cpu" else q8, os.path.join(out, "int8.safetensors"))
                files["int8"] = "int8.safetensors"
        if onnx:
            if q8 is None:
                raise UsageError("--onnx needs the int8 model (drop --no-int8)")
            with timer("export:onnx"):
                pyquant.int8.export_onnx(q8, os.path.join(out, "model.onnx"), input_shape=tuple(input_shape))
            files["onnx"] = "model.onnx"
        recipe_obj = qmodel.recipe
        import dataclasses

        manifest = {"format": "pyquant.quantized", "version": 1, **(manifest_extra or {}),
                    "recipe": dataclasses.asdict(recipe_obj), "w_bits": w_bits, "a_bits": a_bits,
                    "input_shape": list(input_shape), "seed": seed, "versions": versions(), "files": files,
                    "accuracy": accuracy, "eval": result.get("eval"), "layers": result["layers"],
                    "activations": report.activations}
        with open(os.path.join(out, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, default=float)
        notes = [f"{k}: {v}" for k, v in (manifest_extra or {}).items() if isinstance(v, (str, int, float))]
        if data is not None:
            notes.append(f"evaluation data: {data[0]} ({data[1].shape[0]} images)")
        result["report"] = report.write(out, accuracy=accuracy or None, title=title, notes=notes,
                                        extra_steps=timer.log)
        result["files"] = {k: os.path.join(out, v) for k, v in files.items()}
    result["steps"] = list(report.steps) + timer.log
    result["seconds"] = sum(s["seconds"] for s in result["steps"])
    result["_qmodel"], result["_int8"] = qmodel, q8
    return result


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@contextlib.contextmanager
def human_output(args):
    """With --json, everything human-readable goes to stderr so stdout holds only the JSON; with --json --quiet it
    is dropped (the JSON holds it all; notes and errors still go to stderr)."""
    if getattr(args, "json", False):
        with open(os.devnull, "w") if getattr(args, "quiet", False) else contextlib.nullcontext(sys.stderr) as sink, \
                contextlib.redirect_stdout(sink):
            yield
    else:
        yield


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, default=float) + "\n")


def set_threads(args) -> None:
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


# ------------------------------------------------------------------------------------------------------ subcommands

def run_quantize(args) -> int:
    import pyquant
    from pyquant.models import get_model

    set_threads(args)
    if args.recipe not in pyquant.RECIPES:
        raise UsageError(f"--recipe {args.recipe!r}: choose one of {', '.join(sorted(pyquant.RECIPES))}")
    if args.onnx and importlib.util.find_spec("onnx") is None:
        raise UsageError("--onnx needs the onnx package: pip install onnx (or pyquant[onnx])")
    out = prepare_out(args.out)
    device = pick_device(args.device)
    with human_output(args):
        model, info = get_model(args.model, args.checkpoint)
        shape = args.input_shape or info.input_shape
        if not shape:
            raise UsageError(f"model {args.model}: pass --input-shape C,H,W")
        check_input_shape(model.to(device), shape, device)
        data = load_data(args.eval_data, shape, info.mean, info.std, args, info)
        overrides = {}
        if args.first_last_bits is not None:
            overrides["first_last_bits"] = args.first_last_bits
        if args.input_bits is not None:
            overrides["input_bits"] = args.input_bits
        if args.avg_bits is not None:
            if pyquant.RECIPES[args.recipe].data is None and not args.calib:
                raise UsageError(f"--avg-bits: the allocation measures each layer's sensitivity on data, and recipe "
                                 f"{args.recipe} synthesizes none; use a recipe that does (best, zeroq, dsg, aac_abn) "
                                 f"or --calib DIR")
            overrides["mixed_precision_bits"] = args.avg_bits
        if pyquant.RECIPES[args.recipe].data is not None:
            if args.num_samples is not None:
                overrides["num_samples"] = args.num_samples
            if args.iterations is not None:
                overrides["data_iterations"] = args.iterations
        calib, calib_steps = None, []
        if args.calib:
            from pyquant.distill import load_shards

            if not os.path.isfile(os.path.join(args.calib, "manifest.json")):
                raise UsageError(f"--calib {args.calib}: no manifest.json (a folder written by pyquant distill)")
            t0 = time.perf_counter()
            calib = load_shards(args.calib).to(device)
            if tuple(calib.shape[1:]) != tuple(shape):
                raise UsageError(f"--calib {args.calib}: samples are {tuple(calib.shape[1:])}, the model takes "
                                 f"{tuple(shape)}")
            calib_steps = [{"step": "load:calib", "seconds": time.perf_counter() - t0,
                            "detail": f"{calib.shape[0]} samples from {args.calib}"}]
        if not args.quiet:
            print(f"pyquant quantize: {args.model} ({info.weights}), recipe {args.recipe}, W{args.w_bits}A{args.a_bits}"
                  f", input {','.join(map(str, shape))}, device {device}")
        extra = {"model": args.model, "weights": info.weights, "mean": info.mean if args.mean is None else args.mean,
                 "std": info.std if args.std is None else args.std,
                 # how the evaluation data were read, so that pyquant eval reads them the same way
                 "normalization_flags": args.mean is not None or args.std is not None, "eval_limit": args.limit}
        if args.checkpoint:
            extra["checkpoint_sha256"] = file_sha256(args.checkpoint)
        result = quantize_job(model, input_shape=shape, recipe=args.recipe, w_bits=args.w_bits, a_bits=args.a_bits,
                              device=device, data=data, out=out, int8=args.int8, onnx=args.onnx, seed=args.seed,
                              overrides=overrides, quiet=args.quiet, batch_size=args.batch_size,
                              manifest_extra=extra, calib=calib, calib_steps=calib_steps,
                              title=f"{args.model}: {args.recipe}, W{args.w_bits}A{args.a_bits}")
        result["model"] = args.model
        acc = result["accuracy"]
        if acc:
            print("  ".join(f"{k} {v:.2f} %" for k, v in acc.items()) + f"   ({result['eval']['images']} images)")
        if out:
            print(f"report: {result['report']}")
    if args.json:
        print_json(public(result))
    return 0


def run_eval(args) -> int:
    import torch

    import pyquant
    from pyquant.quant import serialize

    set_threads(args)
    device = pick_device(args.device)
    manifest_path = os.path.join(args.dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise UsageError(f"{args.dir}: no manifest.json (a folder written by `pyquant quantize --out`)")
    with open(manifest_path) as f:
        manifest = json.load(f)
    files = manifest.get("files", {})
    if args.checkpoint and not args.fp32:
        raise UsageError("--checkpoint: it gives the weights of --fp32 MODEL; pass --fp32 too")
    with human_output(args):
        models = {}
        if args.fp32:
            from pyquant.models import get_model

            models["FP32"] = get_model(args.fp32, args.checkpoint)[0]
        if "fake_quant" in files:
            path = os.path.join(args.dir, files["fake_quant"])
            try:
                models["fake-quant"] = serialize.load(path)
            except ValueError as err:  # saved as a state dict only (a graph pyquant cannot store without pickle)
                print(f"pyquant eval: fake-quant model skipped: {err}", file=sys.stderr)
        if "int8" in files:
            models["int8"] = pyquant.int8.load(os.path.join(args.dir, files["int8"]))
        if not models.keys() - {"FP32"}:
            raise UsageError(f"{args.dir}: neither a fake-quant nor an int8 model to evaluate")
        shape = tuple(manifest["input_shape"])
        if args.fp32:
            check_input_shape(models["FP32"].to(device), shape, device)
        spec = args.eval_data or (manifest.get("eval") or {}).get("data")
        if spec is None:
            raise UsageError("pass --eval DATA (an image folder, an .npz with x and y, or 'digits')")
        spec, x, y = load_data(spec, shape, manifest.get("mean"), manifest.get("std"), args,
                               explicit=bool(manifest.get("normalization_flags")),
                               limit=manifest.get("eval_limit") if not args.eval_data else None)
        accuracy, seconds = {}, {}
        for label, model in models.items():
            t0 = time.perf_counter()
            accuracy[label] = evaluate(model.to(device), x, y, device, batch_size=args.batch_size,
                                       desc=f"eval {label}", quiet=args.quiet)
            seconds[label] = time.perf_counter() - t0
        if not args.quiet:
            print(f"{manifest.get('model', args.dir)} W{manifest['w_bits']}A{manifest['a_bits']} "
                  f"({manifest['recipe']['name']}) on {x.shape[0]} images of {spec}:")
        print("  ".join(f"{k} {v:.2f} %" for k, v in accuracy.items()))
    if args.json:
        print_json({"dir": args.dir, "data": spec, "images": int(x.shape[0]), "accuracy": accuracy,
                    "int8_top1": accuracy.get("int8"), "seconds": seconds, "device": str(device),
                    "recorded": manifest.get("accuracy"), "torch": torch.__version__})
    return 0


# ------------------------------------------------------------------------------------------------------------- main

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first); exit code 2 as argparse."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyquant", description="Data-free quantization for PyTorch. Without a "
                                     "subcommand: the default job (pyquant demo).")
    parser.add_argument("--version", action="store_true", help="print version and build info")
    sub = parser.add_subparsers(dest="command")
    for name, module_name in SUBCOMMANDS:
        module = importlib.import_module(module_name)
        add = getattr(module, f"add_{name}_parser", None) or module.add_parser
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["demo"] + argv  # the built-in default job; its options may follow a bare `pyquant`
    args = parser.parse_args(argv)
    if args.version:
        import pyquant

        print(pyquant.__version__, pyquant.build_info())
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (UsageError, ValueError, TypeError, OSError) as err:
        # bad input: FileNotFoundError, a checkpoint that does not match, an unknown model, a model pyquant cannot
        # quantize (pyquant raises ValueError/TypeError naming the argument or layer)
        if os.environ.get("PYQUANT_DEBUG"):
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"pyquant {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyquant {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
