"""`pyquant demo`: fake-quantize a small network's weights and activations with pyquant's kernels and
report the error against FP32 and the kernel speed against ATen.

Uses CIFAR ResNet-20 with the real checkpoint and test images when the shared data folder is found
(PYQUANT_DATA or ../shared/data), otherwise random weights and random inputs.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from pyquant import ops


def add_parser(sub):
    p = sub.add_parser("demo", help="fake-quantize ResNet-20 and print error and kernel speed (default job)")
    p.add_argument("--images", type=int, default=1000, help="CIFAR-10 test images to evaluate (when available)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.set_defaults(run=run)


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


def run(args) -> int:
    import copy

    import pyquant
    from pyquant.data import evaluate_top1, find_shared_data, load_cifar10_npz
    from pyquant.models import resnet_cifar

    if args.threads:
        torch.set_num_threads(args.threads)
    info = pyquant.build_info()
    print(f"pyquant {info['version']} | torch {info['torch_runtime']} | CPU kernels: {info['cpu_isa']} | "
          f"CUDA kernels: {'yes' if info['cuda'] else 'no'} | threads: {torch.get_num_threads()}")
    data = find_shared_data()
    torch.manual_seed(0)
    if data:
        model = resnet_cifar(20, checkpoint=f"{data}/resnet20-12fca82f.th")
        images, labels = load_cifar10_npz(f"{data}/cifar10_test_jpeg_q75.npz")
        perm = torch.randperm(images.shape[0])[: args.images]
        images, labels = images[perm], labels[perm]
        print(f"ResNet-20 (pretrained) on {images.shape[0]} real CIFAR-10 test images from {data}")
    else:
        model = resnet_cifar(20)
        images, labels = torch.randn(256, 3, 32, 32), None
        print("shared data not found: ResNet-20 with random weights on random inputs (set PYQUANT_DATA)")
    calib = torch.randn(64, 3, 32, 32) if labels is None else images[:64]
    with torch.no_grad():
        ref_logits = model(images)
    fp32 = evaluate_top1(model, images, labels) if labels is not None else None
    print(f"{'config':<8} {'logit SQNR (dB)':>16} {'top-1 (%)':>10}")
    print(f"{'FP32':<8} {'-':>16} {fp32 if fp32 is not None else '-':>10}")
    for w_bits, a_bits in ((8, 8), (6, 6), (4, 8)):
        q = copy.deepcopy(model)
        quantize_weights_(q, w_bits)
        ActivationQuantizer(q, a_bits, calib)
        with torch.no_grad():
            logits = q(images)
        top1 = evaluate_top1(q, images, labels) if labels is not None else None
        print(f"W{w_bits}A{a_bits:<5} {sqnr_db(ref_logits, logits):>16.2f} {top1 if top1 is not None else '-':>10}")

    x = torch.randn(64, 256, 28, 28)
    scale = torch.rand(256) * 0.05 + 0.01
    zp = torch.randint(0, 255, (256,), dtype=torch.int32)
    ours = time_call(lambda: ops.fake_quant(x, scale, zp, 0, 255, axis=1))
    aten = time_call(lambda: torch.fake_quantize_per_channel_affine(x, scale, zp, 1, 0, 255))
    buf = torch.empty_like(x)
    ours_out = time_call(lambda: ops.fake_quant(x, scale, zp, 0, 255, axis=1, out=buf))
    copy_t = time_call(lambda: buf.copy_(x))
    print(f"per-channel fake_quant of a 64x256x28x28 activation (median): pyquant {ours * 1e3:.1f} ms, "
          f"ATen {aten * 1e3:.1f} ms ({aten / ours:.1f}x); with out=: {ours_out * 1e3:.1f} ms "
          f"vs copy_ {copy_t * 1e3:.1f} ms")
    return 0
