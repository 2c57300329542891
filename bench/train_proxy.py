"""Trains the MobileNetV2 proxy that `best`'s settings are chosen on (issue 13).

A MobileNetV2 in torchvision's layout (pyquant.models.mobilenet_v2, width 0.5, CIFAR stem: stride 8 in
total) trained on one half of the shared CIFAR-10 JPEG test images (within each class, even
``index_in_class``) and evaluated on the other half (odd): real BatchNorm statistics and a real accuracy,
with depthwise convolutions, ReLU6 and linear bottlenecks like the ImageNet MobileNetV2 users bring.
Those 5,000 evaluation images are a development set: ResNet-20/56's reported numbers use all 10,000
images with networks never used to choose settings.

SGD + Nesterov momentum, cosine learning rate, random crop (pad 4) and horizontal flip, one thread;
bf16 autocast with channels_last where the CPU computes bf16 natively (AMX or AVX512-BF16), float32 NCHW
elsewhere (``--precision``: on an AVX2-only CPU bf16 autocast is ~10x slower than float32). Checkpoints after every epoch to the cache folder
(~/.cache/pyquant/proxy, or PYQUANT_CACHE/proxy) and resumes from there after a kill; loads with
weights_only=True.

    python bench/train_proxy.py --epochs 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyquant.data import evaluate_top1, find_shared_data  # noqa: E402
from pyquant.data.cifar import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from pyquant.models.mobilenet_v2 import mobilenet_v2  # noqa: E402

WIDTH = 0.5
NAME = f"mobilenet_v2_w{WIDTH}_cifar_half"


def cache_dir() -> str:
    root = os.environ.get("PYQUANT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "pyquant"))
    return os.path.join(root, "proxy")


def proxy_split(data_dir: str):
    """(train_x, train_y, eval_x, eval_y): normalised NCHW float32, split by parity of index_in_class."""
    with np.load(os.path.join(data_dir, "cifar10_test_jpeg_q75.npz")) as d:
        x, y, idx = d["x"], d["y"], d["index_in_class"]
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    images = (images - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    labels = torch.from_numpy(np.asarray(y)).long()
    train = torch.from_numpy(np.asarray(idx) % 2 == 0)
    return images[train], labels[train], images[~train], labels[~train]


def load_proxy(path: str | None = None):
    """The trained proxy (eval mode) from the cache folder; raises FileNotFoundError naming the command."""
    path = path or os.path.join(cache_dir(), NAME + ".pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: train the proxy first with python bench/train_proxy.py")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return mobilenet_v2(10, WIDTH, cifar_stem=True, state_dict=state["model"] if "model" in state else state)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, n), generator=g)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16); elsewhere autocast emulates it."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="auto: bf16 autocast + channels_last where the CPU has AMX or AVX512-BF16, else fp32")
    args = ap.parse_args(argv)
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16())
    print(f"precision: {'bf16 autocast, channels_last' if use_bf16 else 'float32, NCHW'}")
    torch.set_num_threads(args.threads)
    data_dir = find_shared_data()
    if data_dir is None:
        sys.exit("the shared data folder is needed (PYQUANT_DATA=/path/to/shared/data)")
    tx, ty, ex, ey = proxy_split(data_dir)
    os.makedirs(cache_dir(), exist_ok=True)
    ckpt = os.path.join(cache_dir(), NAME + ".ckpt")
    torch.manual_seed(args.seed)
    memory_format = torch.channels_last if use_bf16 else torch.contiguous_format
    model = mobilenet_v2(10, WIDTH, cifar_stem=True).train().to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(tx.shape[0] / args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / (args.epochs * steps_per_epoch))))
    start, history = 0, []
    if os.path.isfile(ckpt):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, history = state["epoch"], json.loads(state["history"])
        print(f"resumed after epoch {start}")
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(start):  # the same permutations and crops as an uninterrupted run
        torch.randperm(tx.shape[0], generator=g)
        augment(tx[:1].expand(tx.shape[0], -1, -1, -1), g)
    for epoch in range(start, args.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(tx.shape[0], generator=g)
        xs = augment(tx[perm], g).contiguous(memory_format=memory_format)
        ys = ty[perm]
        total = 0.0
        for i in tqdm(range(0, xs.shape[0], args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = F.cross_entropy(model(xs[i:i + args.batch_size]), ys[i:i + args.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * min(args.batch_size, xs.shape[0] - i)
        model.eval()
        acc = evaluate_top1(model, ex, ey)
        history.append({"epoch": epoch + 1, "loss": total / xs.shape[0], "eval_top1": acc,
                        "seconds": time.perf_counter() - t0})
        print(json.dumps(history[-1]), flush=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch + 1, "history": json.dumps(history)}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": state}, os.path.join(cache_dir(), NAME + ".pt"))
    with open(os.path.join(cache_dir(), NAME + ".json"), "w") as f:
        json.dump({"width": WIDTH, "epochs": args.epochs, "precision": "bf16" if use_bf16 else "fp32",
                   "history": history,
                   "fp32_eval_top1": history[-1]["eval_top1"] if history else None}, f, indent=1)
    print(f"FP32 top-1 on the 5,000 held-out images: {history[-1]['eval_top1']:.2f} %")


if __name__ == "__main__":
    main()
