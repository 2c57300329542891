"""histogram: bit-exact counts against torch.histc per channel, edges, accumulation, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_layout
from pyquant import ops, reference


@pytest.mark.parametrize("bins", [1, 7, 128, 2048])
def test_per_tensor_equals_histc(bins):
    x = torch.randn(10000)
    lo, hi = -2.0, 2.5
    got = ops.histogram(x, bins, lo, hi)
    torch.testing.assert_close(got, reference.histogram(x, bins, lo, hi), rtol=0, atol=0)
    inside = x[(x >= lo) & (x <= hi)]
    h = torch.histc(inside, bins, lo, hi).long()
    # Only the edge bins differ from histc (they also hold the values outside the range).
    assert torch.equal(got[1:-1], h[1:-1]) if bins > 2 else True
    assert got.sum().item() == x.numel()


@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("axis", [0, 1, 3])
def test_per_channel_equals_histc(layout, axis):
    base = torch.randn(5, 6, 70, 3)
    x = make_layout(base, layout)
    c = base.shape[axis]
    lo = -torch.rand(c) - 0.5
    hi = torch.rand(c) + 0.5
    got = ops.histogram(x, 33, lo, hi, axis=axis)
    torch.testing.assert_close(got, reference.histogram(base, 33, lo, hi, axis), rtol=0, atol=0)


def test_edge_values_and_exact_bin_edges():
    # Values exactly on every bin edge, at lo and hi, and outside.
    bins, lo, hi = 16, -1.0, 3.0
    edges = torch.linspace(lo, hi, bins + 1)
    x = torch.cat([edges, torch.tensor([-5.0, 7.0, hi, lo])])
    got = ops.histogram(x, bins, lo, hi)
    expect = torch.histc(x.clamp(lo, hi), bins, lo, hi).long()
    assert torch.equal(got, expect)
    assert got[0].item() >= 3 and got[-1].item() >= 3


def test_range_from_data_and_constant_channels():
    x = torch.randn(4, 500)
    x[2] = 1.5
    x[3] = 0.0
    counts, lo, hi = ops.histogram_range(x, 50, axis=0)
    torch.testing.assert_close(lo[:2], x[:2].amin(1))
    torch.testing.assert_close(hi[:2], x[:2].amax(1))
    assert lo[2].item() == 0.5 and hi[2].item() == 2.5  # histc's widening
    assert lo[3].item() == -1.0 and hi[3].item() == 1.0
    for c in range(4):
        assert torch.equal(counts[c], torch.histc(x[c], 50, lo[c].item(), hi[c].item()).long())


def test_accumulates_across_calls():
    a, b = torch.randn(3, 1000), torch.randn(3, 700) * 2
    lo, hi = torch.full((3,), -3.0), torch.full((3,), 3.0)
    running = ops.histogram(a, 64, lo, hi, axis=0)
    running = ops.histogram(b, 64, lo, hi, axis=0, counts=running)
    both = ops.histogram(torch.cat([a, b], 1), 64, lo, hi, axis=0)
    assert torch.equal(running, both)


def test_reduced_precision():
    x = torch.randn(3000)
    for dt in (torch.float16, torch.bfloat16):
        xr = x.to(dt)
        assert torch.equal(ops.histogram(xr, 100, -2.0, 2.0), reference.histogram(xr.float(), 100, -2.0, 2.0))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_raises(bad):
    x = torch.randn(100)
    x[17] = bad
    with pytest.raises(ValueError, match="finite"):
        ops.histogram(x, 10, -1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        ops.histogram(x, 10)


def test_argument_errors():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="empty"):
        ops.histogram(torch.empty(0), 10)
    with pytest.raises(ValueError, match="bins"):
        ops.histogram(x, 0)
    with pytest.raises(ValueError, match="lo must be < hi"):
        ops.histogram(x, 10, 1.0, 1.0)
    with pytest.raises(ValueError, match="together"):
        ops.histogram(x, 10, lo=1.0)
    with pytest.raises(ValueError, match="counts must have shape"):
        ops.histogram(x, 10, -1.0, 1.0, counts=torch.zeros(11, dtype=torch.long))
    with pytest.raises(TypeError, match="counts must be int64"):
        ops.histogram(x, 10, -1.0, 1.0, counts=torch.zeros(10))
    with pytest.raises(ValueError, match="lo must have 1 or 4"):
        ops.histogram(x, 10, torch.zeros(3), torch.ones(3), axis=0)
    with pytest.raises(TypeError, match="x must be"):
        ops.histogram(x.int(), 10)


def test_opcheck():
    x = torch.randn(4, 50)
    torch.library.opcheck(torch.ops.pyquant.histogram.default, (x, 16, None, None, 0, None))
    lo, hi = torch.tensor([-1.0]), torch.tensor([1.0])
    torch.library.opcheck(torch.ops.pyquant.histogram.default,
                          (x, 16, lo, hi, None, torch.zeros(16, dtype=torch.long)))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3000),
    channels=st.integers(1, 5),
    bins=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
def test_property_equals_histc(n, channels, bins, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(channels, n, generator=g) * 3
    lo = -torch.rand(channels, generator=g) * 3
    hi = torch.rand(channels, generator=g) * 3 + 0.01
    got = ops.histogram(x, bins, lo, hi, axis=0)
    assert torch.equal(got, reference.histogram(x, bins, lo, hi, 0))


def test_zero_spike_and_partial_stages():
    """The shared cases in this process's variant (AVX-512 where the CPU has it)."""
    from _histogram_cases import check_histogram_cases

    check_histogram_cases()


@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_zero_spike_lower_cpu_variants(isa):
    """The same cases in each lower compiled variant (ATEN_CPU_CAPABILITY picks it per process): AVX2's
    intrinsics and at::vec's portable vectors take other code paths through the same stages."""
    import os
    import subprocess
    import sys

    script = ("import sys, pyquant; sys.path.insert(0, %r)\n"
              "assert pyquant.build_info()['cpu_isa'] == %r, pyquant.build_info()\n"
              "from _histogram_cases import check_histogram_cases\n"
              "check_histogram_cases()\nprint('ok')\n") % (os.path.dirname(os.path.abspath(__file__)), isa)
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
