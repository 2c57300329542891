"""fake_quant forward / forward+backward / out= against ATen, an eager composition and a plain copy.

Run: python -m pytest bench/bench_fake_quant.py --benchmark-only   (or python bench/report_fake_quant.py)
Each benchmark's group is (tensor, granularity, bits, mode); within a group the baselines are:
  aten   torch.fake_quantize_per_{tensor,channel}_affine (the production kernel)
  eager  the plain-PyTorch reference composition (pyquant.reference.fake_quant)
  copy   x.clone() (out of place) / buf.copy_(x) (out=): the memory-bandwidth bound
"""

import pytest
import torch

from pyquant import ops, reference

SHAPES = {"act_64x256x28x28": ((64, 256, 28, 28), 1), "weight_512x512x3x3": ((512, 512, 3, 3), 0)}


def make_case(shape_name, granularity, bits):
    shape, axis = SHAPES[shape_name]
    torch.manual_seed(0)
    x = torch.randn(shape)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    channels = shape[axis] if granularity == "per_channel" else 1
    scale = torch.rand(channels) * 0.05 + 0.01
    zp = torch.zeros(channels, dtype=torch.int32)
    return x, scale, zp, qmin, qmax, (axis if granularity == "per_channel" else None)


def aten(x, scale, zp, qmin, qmax, axis):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", ["pyquant", "aten", "eager", "copy"])
def test_forward(benchmark, shape_name, granularity, bits, impl):
    x, scale, zp, qmin, qmax, axis = make_case(shape_name, granularity, bits)
    benchmark.group = f"forward {shape_name} {granularity} {bits}bit"
    fns = {
        "pyquant": lambda: ops.fake_quant(x, scale, zp, qmin, qmax, axis),
        "aten": lambda: aten(x, scale, zp, qmin, qmax, axis),
        "eager": lambda: reference.fake_quant(x, scale, zp, qmin, qmax, axis),
        "copy": lambda: x.clone(),
    }
    benchmark(fns[impl])


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", ["pyquant", "aten", "copy"])
def test_forward_out(benchmark, shape_name, granularity, bits, impl):
    x, scale, zp, qmin, qmax, axis = make_case(shape_name, granularity, bits)
    buf = torch.empty_like(x)
    benchmark.group = f"out= {shape_name} {granularity} {bits}bit"
    fns = {
        "pyquant": lambda: ops.fake_quant(x, scale, zp, qmin, qmax, axis, out=buf),
        "aten": lambda: aten(x, scale, zp, qmin, qmax, axis),  # ATen has no out= variant
        "copy": lambda: buf.copy_(x),
    }
    benchmark(fns[impl])


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", ["pyquant", "aten", "eager"])
def test_forward_backward(benchmark, shape_name, granularity, bits, impl):
    x, scale, zp, qmin, qmax, axis = make_case(shape_name, granularity, bits)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    benchmark.group = f"fwd+bwd {shape_name} {granularity} {bits}bit"

    def eager_ste(x):
        # The usual eager STE: y = x + (fq(x) - x).detach(), masked to the grid by a clamp.
        y = reference.fake_quant(x.detach(), scale, zp, qmin, qmax, axis)
        mask = reference.fake_quant_mask(x.detach(), scale, zp, qmin, qmax, axis)
        return x * mask + (y - x * mask).detach()

    fns = {
        "pyquant": lambda: ops.fake_quant(x, scale, zp, qmin, qmax, axis),
        "aten": lambda: aten(x, scale, zp, qmin, qmax, axis),
        "eager": lambda: eager_ste(x),
    }

    def step():
        y = fns[impl]()
        torch.autograd.grad(y, x, grad)

    benchmark(step)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", ["pyquant", "aten"])
def test_lsq_forward_backward(benchmark, shape_name, granularity, impl):
    x, scale, zp, qmin, qmax, axis = make_case(shape_name, granularity, 4)
    x.requires_grad_(True)
    s = scale.clone().requires_grad_(True)
    z = zp.float().requires_grad_(True)
    grad = torch.randn_like(x)
    benchmark.group = f"lsq fwd+bwd {shape_name} {granularity} 4bit"

    def step():
        if impl == "pyquant":
            y = ops.fake_quant_lsq(x, s, z, qmin, qmax, axis)
        elif axis is None:
            y = torch._fake_quantize_learnable_per_tensor_affine(x, s, z, qmin, qmax, 1.0)
        else:
            y = torch._fake_quantize_learnable_per_channel_affine(x, s, z, axis, qmin, qmax, 1.0)
        torch.autograd.grad(y, (x, s, z), grad)

    benchmark(step)
