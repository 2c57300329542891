"""Side by side on the same W8A8 networks, same calibration images, same run: FP32 eager, pyquant int8
(pyquant.int8.convert), torch.ao FX int8 (x86 backend, calibrated on the same images) and ONNX Runtime
running pyquant's own QDQ export; top-1 agreement of each int8 engine with the fake-quant model.

    PYTHONPATH=. python bench/int8_engines.py --nets resnet20 resnet56 mobilenetv2 --batches 1 64 256 \
        --threads 1 2 --images 2000

Latencies are medians of interleaved rounds (engines take turns inside each round): the machine is shared
with other jobs, so only ratios within one run mean anything. Writes bench/results/int8_engines.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import warnings

import torch
from tqdm import tqdm

import pyquant
from pyquant import int8
from pyquant.data.cifar import find_shared_data, load_cifar10_npz
from pyquant.models import mobilenet_v2_cifar, resnet_cifar

from int8_end_to_end import _save, predictions, time_rounds  # noqa: E402  (same folder)


def build_net(name: str, root: str) -> torch.nn.Module:
    if name == "mobilenetv2":  # untrained, BN statistics randomized (no CIFAR checkpoint is shared)
        return mobilenet_v2_cifar(randomize_bn=True, seed=0)
    depth = int(name.replace("resnet", ""))
    ckpt = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}[depth]
    return resnet_cifar(depth, checkpoint=os.path.join(root, ckpt))


def torch_ao_x86(fp32: torch.nn.Module, calib: torch.Tensor) -> torch.nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(fp32).eval(), get_default_qconfig_mapping("x86"), (calib[:1],))
        with torch.no_grad():
            for i in range(0, len(calib), 64):
                prepared(calib[i:i + 64])
        return convert_fx(prepared)


def onnx_runtime(q, path: str, threads: int):
    import onnxruntime as ort

    int8.export_onnx(q, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # no spin-waiting: ORT's pool would otherwise compete with torch's OpenMP threads on a shared machine
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def markdown_table(res: dict) -> str:
    """The results as a markdown table: milliseconds per batch, pyquant's speedups, agreement."""
    lines = ["| net | threads | batch | FP32 eager ms | pyquant int8 ms | torch.ao x86 ms | ORT (pyquant QDQ) ms | "
             "pyquant vs FP32 | vs torch.ao | vs ORT |", "|---|---|---|---|---|---|---|---|---|---|"]
    for net, e in res["nets"].items():
        for key, r in e["timings"].items():
            threads, batch = key.replace("threads", "").split("_batch")
            lines.append(f"| {net} | {threads} | {batch} | {r['fp32_ms']:.2f} | {r['pyquant_ms']:.2f} | "
                         f"{r['torch_ao_x86_ms']:.2f} | {r['onnxruntime_ms']:.2f} | {r['pyquant_speedup_vs_fp32']:.2f}x | "
                         f"{r['pyquant_speedup_vs_torch_ao_x86']:.2f}x | {r['pyquant_speedup_vs_onnxruntime']:.2f}x |")
    lines += ["", "| net | top-1 agreement with fake-quant: pyquant | torch.ao x86 | ORT |", "|---|---|---|---|"]
    for net, e in res["nets"].items():
        a = e["agreement_vs_fake_quant_pct"]
        lines.append(f"| {net} | {a['pyquant']:.2f} % | {a['torch_ao_x86']:.2f} % | {a['onnxruntime']:.2f} % |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", metavar="JSON", help="only print the markdown table of a results file")
    ap.add_argument("--nets", nargs="+", default=["resnet20", "resnet56", "mobilenetv2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64, 256])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--images", type=int, default=10000, help="CIFAR test images for the top-1 agreement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench/results/int8_engines.json")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            print(markdown_table(json.load(f)))
        return

    root = find_shared_data()
    if root is None:
        raise SystemExit("shared data not found (set PYQUANT_DATA)")
    x, _ = load_cifar10_npz(os.path.join(root, "cifar10_test_jpeg_q75.npz"))
    calib = x[3::39][:256]
    res = {"torch": torch.__version__, "images": min(args.images, len(x)), "calib_images": len(calib),
           "note": "shared machine: compare ratios within one run only", "nets": {}}
    tmp = tempfile.mkdtemp()
    for net in args.nets:
        torch.set_num_threads(1)
        fp32 = build_net(net, root)
        torch.manual_seed(0)
        fq = pyquant.quantize(fp32, "zeroq", w_bits=8, a_bits=8, input_shape=(3, 32, 32), data=calib, seed=0)
        q = int8.convert(fq)
        ao = torch_ao_x86(fp32, calib)
        onnx_path = os.path.join(tmp, f"{net}.onnx")
        ort1 = onnx_runtime(q, onnx_path, 1)
        xs = x[: res["images"]]
        p_fq = predictions(fq, xs)
        agree = {}
        for eng, m in (("pyquant", q), ("torch_ao_x86", ao), ("onnxruntime", ort1)):
            agree[eng] = 100.0 * (predictions(m, xs) == p_fq).double().mean().item()
        entry = {"agreement_vs_fake_quant_pct": agree, "timings": {}}
        print(f"{net}: top-1 agreement with fake-quant " + ", ".join(f"{k} {v:.2f} %" for k, v in agree.items()),
              flush=True)
        for threads in args.threads:
            torch.set_num_threads(threads)
            ort_t = onnx_runtime(q, onnx_path, threads)
            for batch in args.batches:
                iters = max(1, 64 // batch)
                t = time_rounds({"fp32": fp32, "pyquant": q, "torch_ao_x86": ao, "onnxruntime": ort_t},
                                x[:batch], args.rounds, iters)
                row = {k: 1e3 * v for k, v in t.items()}
                row = {f"{k}_ms": v for k, v in row.items()}
                row.update({f"pyquant_speedup_vs_{k}": t[k] / t["pyquant"] for k in t if k != "pyquant"})
                entry["timings"][f"threads{threads}_batch{batch}"] = row
                print(f"  {net} threads {threads} batch {batch:3d}: " + "  ".join(
                    f"{k} {1e3 * v:8.2f} ms" for k, v in t.items()) + "  | pyquant vs " + ", ".join(
                    f"{k} {t[k] / t['pyquant']:.2f}x" for k in t if k != "pyquant"), flush=True)
        res["nets"][net] = entry
        _save(res, args.out)


if __name__ == "__main__":
    main()
