"""ops.int8_add (the requantizing residual add of uint8 codes) against its baselines (pytest-benchmark).

Run: PYTHONPATH=. python -m pytest bench/bench_int8_add.py --benchmark-only
Within each group (shape):
  pyquant  ops.int8_add
  aten     torch.ops.quantized.add on quint8 tensors of the same scales and zero-points (PyTorch's own int8 add)
  eager    the plain-PyTorch reference (pyquant.reference.int8.int8_add: dequantize, add, quantize)
  copy     out.copy_(a): one read and one write of the codes, a floor below the add's two reads and one write
"""

import pytest
import torch

from pyquant import ops
from pyquant.reference import int8 as ref

SHAPES = {"resnet20_64x16x32x32": (64, 16, 32, 32), "act_64x256x28x28": (64, 256, 28, 28)}
A_SCALE, A_ZP, B_SCALE, B_ZP, OUT_SCALE, OUT_ZP = 0.031, 3, 0.047, 0, 0.06, 2


def make_case(shape):
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    b = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return a, b


def call_for(impl, a, b):
    if impl == "pyquant":
        return lambda: ops.int8_add(a, A_SCALE, A_ZP, b, B_SCALE, B_ZP, OUT_SCALE, OUT_ZP)
    if impl == "eager":
        return lambda: ref.int8_add(a, A_SCALE, A_ZP, b, B_SCALE, B_ZP, OUT_SCALE, OUT_ZP)
    if impl == "aten":
        qa = torch._make_per_tensor_quantized_tensor(a, A_SCALE, A_ZP)
        qb = torch._make_per_tensor_quantized_tensor(b, B_SCALE, B_ZP)
        return lambda: torch.ops.quantized.add(qa, qb, OUT_SCALE, OUT_ZP)
    out = torch.empty_like(a)
    return lambda: out.copy_(a)


@pytest.mark.parametrize("impl", ["pyquant", "aten", "eager", "copy"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_int8_add(benchmark, shape_name, impl):
    shape = SHAPES[shape_name]
    benchmark.group = f"int8_add {shape_name}"
    benchmark.extra_info.update(kind="int8_add", shape=list(shape), impl=impl)
    a, b = make_case(shape)
    if impl == "pyquant":  # the benchmark times the op that computes the reference's codes
        assert torch.equal(call_for("pyquant", a, b)(), call_for("eager", a, b)())
    benchmark.pedantic(call_for(impl, a, b), rounds=20, iterations=1, warmup_rounds=2)
