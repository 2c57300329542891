"""Benchmarks of the BN-statistic loss and of one ZeroQ iteration (pytest-benchmark).

    PYTHONPATH=. python -m pytest bench/bench_distill.py --benchmark-json bench/results/bench_distill.json
    PYTHONPATH=. python bench/report_distill.py --json bench/results/bench_distill.json

Threads: PYQ_BENCH_THREADS (default 2, see bench/conftest.py).

Baselines (named in each case's ``impl``):
  * ``eager``: the BN loss written with ``torch.var_mean`` and PyTorch ops, backward by autograd --
    what ZeroQ's ``distill_data.py`` hooks do (pyquant.distill.hooks.eager_bn_stat_loss);
  * ``pyquant``: the fused ``pyquant.ops.bn_stat_loss`` op (one pass forward, one pass backward);
  * ``model-only``: forward + backward of the network from its logits, no BN loss (the floor; used
    by report_distill.py for the BN-loss share of an iteration).
One ZeroQ iteration = forward with the BN hooks + loss + backward to the input + Adam step.

MobileNetV2 at 224x224 (issue 13's "distillation at ImageNet size"), batch 8, one ZeroQ iteration in three
execution modes in the same run: ``fp32`` (today's path: NCHW float32), ``channels_last`` (NHWC memory format for
the network and the images) and ``bf16`` (``torch.autocast`` bfloat16 around the forward; the BN loss and the
images stay float32). Each case records its loss trajectory (``extra_info["losses"]``) so the modes can be
compared on the BN-loss values as well as on time.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from pyquant import ops
from pyquant.distill import BNStatHooks
from pyquant.distill._loop import own_input_term
from pyquant.distill.hooks import eager_bn_stat_loss
from pyquant.models import fit_bn_statistics, resnet_cifar
from pyquant.models.mobilenet_v2 import mobilenet_v2

# Subnormal gradients make CPU convolutions ~10x slower; the generators flush them, so do the cases.
torch.set_flush_denormal(True)
# Threads: bench/conftest.py (2 by default, PYQ_BENCH_THREADS=N to change).

LOSS_SHAPES = [(128, 64, 32, 32), (32, 256, 56, 56)]
IMPLS = {"pyquant": ops.bn_stat_loss, "eager": eager_bn_stat_loss}


# ------------------------------------------------------------------------------------ BN loss alone


def bn_loss_case(shape, impl):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 1.5 + 0.3).requires_grad_()
    c = shape[1]
    rm = torch.randn(c, generator=g) * 0.5
    rv = torch.rand(c, generator=g) + 0.5
    fn = IMPLS[impl]

    def step():
        loss = fn(x, rm, rv, 1e-5, True, True)
        loss.backward()
        x.grad = None

    return step


@pytest.mark.parametrize("impl", ["pyquant", "eager"])
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bn_stat_loss_fwd_bwd(benchmark, shape, impl):
    benchmark.group = "bn_stat_loss fwd+bwd " + "x".join(map(str, shape))
    benchmark.extra_info.update(kind="bn_loss", shape=list(shape), impl=impl)
    step = bn_loss_case(shape, impl)
    benchmark.pedantic(step, rounds=10 if shape[2] < 50 else 5, iterations=1, warmup_rounds=1)


# ------------------------------------------------------------------------------ ZeroQ iteration


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18Shaped(nn.Module):
    """ResNet-18's layer shapes (He et al. 2016, table 1): 7x7/2 stem, max-pool, 4 stages of 2 basic
    blocks (64-512 channels), 1000-way linear; 20 BatchNorm layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_model(name):
    if name == "resnet20":
        return resnet_cifar(20), (3, 32, 32), 128
    torch.manual_seed(0)
    return ResNet18Shaped(), (3, 224, 224), 32


_MODELS = {}


def zeroq_step_case(name, impl):
    if name not in _MODELS:
        model, shape, batch = make_model(name)
        _MODELS[name] = (fit_bn_statistics(model, shape), shape, batch)
    model, shape, batch = _MODELS[name]
    x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(1)).requires_grad_()
    opt = torch.optim.Adam([x], lr=0.5)
    if impl == "model-only":
        for p in model.parameters():
            p.requires_grad_(False)

        def step():
            opt.zero_grad(set_to_none=True)
            model(x).sum().backward()
            opt.step()

        return step, None
    hooks = BNStatHooks(model, per_sample=True, unbiased=True, backend=impl)
    hooks.__enter__()

    def step():
        opt.zero_grad(set_to_none=True)
        model(x)
        loss = hooks.total() + own_input_term(x)
        loss.backward()
        opt.step()

    return step, hooks


@pytest.mark.parametrize("impl", ["pyquant", "eager", "model-only"])
@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_zeroq_iteration(benchmark, name, impl):
    benchmark.group = f"zeroq iteration {name}"
    benchmark.extra_info.update(kind="zeroq_iteration", model=name, impl=impl)
    step, hooks = zeroq_step_case(name, impl)
    try:
        benchmark.pedantic(step, rounds=10 if name == "resnet20" else 5, iterations=1, warmup_rounds=1)
    finally:
        if hooks is not None:
            hooks.__exit__(None, None, None)
        for p in _MODELS[name][0].parameters():
            p.requires_grad_(True)


# -------------------------------------------------------------- MobileNetV2 224x224: execution modes

MODES = ("fp32", "channels_last", "bf16")


def mobilenet224_step_case(mode, losses):
    if "mobilenet_v2" not in _MODELS:
        torch.manual_seed(0)
        _MODELS["mobilenet_v2"] = (fit_bn_statistics(mobilenet_v2(), (3, 224, 224)), (3, 224, 224), 8)
    model, shape, batch = _MODELS["mobilenet_v2"]
    memory_format = torch.channels_last if mode == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=memory_format).requires_grad_()
    opt = torch.optim.Adam([x], lr=0.5)
    hooks = BNStatHooks(model, per_sample=True, unbiased=True)
    hooks.__enter__()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            model(x)
        loss = hooks.total() + own_input_term(x)
        loss.backward()
        opt.step()
        losses.append(float(loss))

    return step, hooks


@pytest.mark.parametrize("mode", MODES)
def test_zeroq_iteration_mobilenet_v2_224(benchmark, mode):
    benchmark.group = "zeroq iteration mobilenet_v2 224x224 batch 8"
    losses = []
    step, hooks = mobilenet224_step_case(mode, losses)
    try:
        benchmark.pedantic(step, rounds=4, iterations=1, warmup_rounds=1)
    finally:
        hooks.__exit__(None, None, None)
        _MODELS["mobilenet_v2"][0].to(memory_format=torch.contiguous_format)
    benchmark.extra_info.update(kind="zeroq_iteration", model="mobilenet_v2_224", impl=mode, losses=losses)
