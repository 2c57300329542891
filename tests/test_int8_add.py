"""int8_add (requantizing add of uint8 codes): bit-exact against pyquant.reference.int8.int8_add on every
compiled CPU variant, on random codes and on every pair of codes; layouts; the ReLU / ReLU6 clamps equal
clamping the float sum; opcheck; bad input; and the converted network's Add module against its float path."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import make_layout
from pyquant import ops
from pyquant.int8.modules import Add, Grid, dequantize, quantize
from pyquant.reference import int8 as ref

CASES = [
    # (a_scale, a_zp, b_scale, b_zp, out_scale, out_zp, qmin, qmax)
    (0.02, 0, 0.05, 128, 0.04, 10, 0, 255),
    (0.1, 255, 0.013, 3, 0.07, 128, 0, 255),
    (0.031, 77, 0.031, 77, 0.031, 77, 20, 200),
    (1e-3, 128, 2.0, 0, 0.5, 0, 0, 255),   # very different scales: saturation at both ends
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
def test_matches_reference(case, layout):
    g = torch.Generator().manual_seed(0)
    # 2 * 5 * 13 * 11 elements: a vector tail on every variant
    a = torch.randint(0, 256, (2, 5, 13, 11), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (2, 5, 13, 11), dtype=torch.uint8, generator=g)
    al, bl = make_layout(a, layout), make_layout(b, "contiguous" if layout == "noncontiguous" else layout)
    y = ops.int8_add(al, *case[:2], bl, *case[2:])
    assert torch.equal(y, ref.int8_add(a, *case[:2], b, *case[2:]))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_every_code_pair():
    """All 65,536 (a, b) code pairs, at a scale where many sums land on rounding ties."""
    a = torch.arange(256, dtype=torch.uint8).repeat_interleave(256)
    b = torch.arange(256, dtype=torch.uint8).repeat(256)
    for args in ((0.5, 128, 0.25, 3, 0.5, 100, 0, 255), (0.1, 7, 0.3, 200, 0.2, 50, 0, 255)):
        y = ops.int8_add(a, *args[:2], b, *args[2:])
        assert torch.equal(y, ref.int8_add(a, *args[:2], b, *args[2:]))


@pytest.mark.parametrize("relu6", [False, True])
def test_add_module_relu_clamp_equals_float_path(relu6):
    """Add's code clamp for a fused ReLU / ReLU6 gives the same codes as ReLU on the float sum."""
    g = torch.Generator().manual_seed(1)
    ga, gb, go = Grid(0.05, 120, 0, 255), Grid(0.03, 90, 0, 255), Grid(0.04, 60, 0, 255)
    a = torch.randint(0, 256, (3, 8, 6, 6), dtype=torch.uint8, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randint(0, 256, (3, 8, 6, 6), dtype=torch.uint8, generator=g)
    m = Add((ga, gb), go, relu=not relu6, relu6=relu6)
    y = dequantize(a, ga) + dequantize(b, gb)
    y = y.clamp(0.0, 6.0) if relu6 else y.clamp_min(0.0)
    expected = quantize(y, go)
    assert torch.equal(m(a, b), expected)
    assert (expected == go.zero_point).any()  # the ReLU clamp was exercised


def test_opcheck():
    a = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    b = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.pyquant.int8_add.default, (a, 0.1, 3, b, 0.2, 100, 0.3, 7, 0, 255))
    torch.library.opcheck(torch.ops.pyquant.int8_add.default,
                          (a.contiguous(memory_format=torch.channels_last), 0.1, 3, b, 0.2, 100, 0.3, 7, 7, 200))


def test_bad_input():
    a = torch.randint(0, 256, (4, 4), dtype=torch.uint8)
    with pytest.raises(TypeError, match="a_q must be uint8"):
        ops.int8_add(a.float(), 0.1, 0, a, 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="same shape"):
        ops.int8_add(a, 0.1, 0, a[:2], 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="b_scale"):
        ops.int8_add(a, 0.1, 0, a, 0.0, 0, 0.1, 0)
    with pytest.raises(ValueError, match="out_zero_point"):
        ops.int8_add(a, 0.1, 0, a, 0.1, 0, 0.1, 256)
    with pytest.raises(ValueError, match="quant_min"):
        torch.ops.pyquant.int8_add(a, 0.1, 0, a, 0.1, 0, 0.1, 0, 10, 5)
    with pytest.raises(TypeError, match="quant_max"):
        ops.int8_add(a, 0.1, 0, a, 0.1, 0, 0.1, 0, 0, 255.0)


@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_lower_cpu_variants_bit_exact(isa):
    """The DEFAULT variant (the CUDA kernel's per-element code) and AVX2 give the reference's bits too."""
    script = r"""
import torch, pyquant
from pyquant import ops
from pyquant.reference import int8 as ref
assert pyquant.build_info()["cpu_isa"] == "%s", pyquant.build_info()
a = torch.arange(256, dtype=torch.uint8).repeat_interleave(256)
b = torch.arange(256, dtype=torch.uint8).repeat(256)
for args in ((0.5, 128, 0.25, 3, 0.5, 100, 0, 255), (0.1, 7, 0.3, 200, 0.2, 50, 9, 240)):
    assert torch.equal(ops.int8_add(a, *args[:2], b, *args[2:]), ref.int8_add(a, *args[:2], b, *args[2:]))
print("ok")
""" % isa
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
