"""Fuzzing every op and estimator with extreme floats (hypothesis): +-FLT_MAX, subnormals, +-inf,
NaN, huge and tiny scales, constant and empty inputs, odd strides. Contract: no crash, no hang, and
either a clear exception (ValueError / TypeError) or an output that keeps the documented promises
(NaN only where x is NaN; finite levels; histogram counts sum to the elements; usable scales).

Budget in CI: 50 examples per property (deadline off), about 30 s in all on one thread, plus one
crash-isolated subprocess that runs the inputs most likely to crash each op and estimator
(tests/fuzz_crash_cases.py) and must exit normally: a segfault shows as a negative return code."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyquant import calib, ops, reference

F32 = torch.finfo(torch.float32)
SPECIAL = [0.0, -0.0, F32.max, -F32.max, F32.tiny, -F32.tiny, 1e-40, -1e-45, float("inf"), float("-inf"),
           float("nan"), 1e30, -1e30, F32.max / 2048]
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def floats(allow_nonfinite=True):
    return st.one_of(st.sampled_from(SPECIAL if allow_nonfinite else [v for v in SPECIAL if abs(v) < float("inf")]),
                     st.floats(width=32, allow_nan=allow_nonfinite, allow_infinity=allow_nonfinite))


@st.composite
def tensors(draw, allow_nonfinite=True, min_numel=0, dtypes=(torch.float32, torch.float16, torch.bfloat16)):
    """A float tensor of 0-3 dims from extreme values, maybe constant, maybe strided or transposed."""
    shape = draw(st.lists(st.integers(0 if min_numel == 0 else 1, 5), min_size=1, max_size=3))
    n = 1
    for s in shape:
        n *= s
    if draw(st.booleans()):
        values = [draw(floats(allow_nonfinite))] * n  # constant
    else:
        values = draw(st.lists(floats(allow_nonfinite), min_size=n, max_size=n))
    x = torch.tensor(values, dtype=torch.float32).reshape(shape)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed" and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "strided":
        big = torch.zeros([2 * s for s in shape])
        big[tuple(slice(None, None, 2) for _ in shape)] = x
        x = big[tuple(slice(None, None, 2) for _ in shape)]
    return x.to(draw(st.sampled_from(dtypes)))


scales = st.one_of(st.sampled_from([1e-45, 1e-40, 2e-39, F32.tiny, 1e-8, 1.0, 1e30, F32.max / 300, F32.max, 0.0,
                                    -1.0, float("inf"), float("nan")]),
                   st.floats(min_value=1.0000000031710769e-30, max_value=1.0000000150474662e30, width=32))
grids = st.sampled_from([(-128, 127), (0, 255), (-8, 7), (0, 1), (-32768, 32767)])


def _level_bound(scale, zp, qmin, qmax):
    return max(abs(qmin - zp), abs(qmax - zp)) * scale


def _check_fake_quant_output(x, y, scale, zp, qmin, qmax):
    assert y.shape == x.shape and y.dtype == x.dtype
    xf, yf = x.float(), y.float()
    assert torch.equal(torch.isnan(yf), torch.isnan(xf)), "NaN appeared where x is not NaN"
    if _level_bound(scale, zp, qmin, qmax) <= torch.finfo(x.dtype).max:
        assert bool(torch.isfinite(yf[~torch.isnan(xf)]).all()), "inf output from a finite grid"


@FUZZ
@given(x=tensors(), scale=scales, zp=st.integers(-200, 300), grid=grids, variant=st.sampled_from(["plain", "out", "grad"]))
def test_fuzz_fake_quant(x, scale, zp, grid, variant):
    qmin, qmax = grid
    try:
        if variant == "out":
            y = ops.fake_quant(x, scale, zp, qmin, qmax, out=torch.empty_like(x))
        elif variant == "grad":
            xg = x.clone().requires_grad_()
            y = ops.fake_quant(xg, scale, zp, qmin, qmax)
            y.float().sum().backward()
            assert torch.isfinite(xg.grad.float()).all()
            y = y.detach()
        else:
            y = ops.fake_quant(x, scale, zp, qmin, qmax)
    except (ValueError, TypeError):
        valid = (0 < scale < float("inf") and 1 / torch.tensor(scale) < float("inf")
                 and qmin <= zp <= qmax and torch.isfinite(torch.tensor(scale) * (qmax - qmin)))
        assert not valid, "a valid call raised"
        return
    _check_fake_quant_output(x, y, float(torch.tensor(scale)), zp, qmin, qmax)


@FUZZ
@given(x=tensors(), scale=scales, grid=grids)
def test_fuzz_fake_quant_lsq_and_pact(x, scale, grid):
    qmin, qmax = grid
    try:
        xs = x.float().clone().requires_grad_()
        s = torch.tensor([scale], requires_grad=True)
        y = ops.fake_quant_lsq(xs, s, torch.zeros(1, requires_grad=True), qmin, qmax)
        y.sum().backward()
        _check_fake_quant_output(x.float(), y.detach(), float(s), 0, qmin, qmax)
        assert not torch.isnan(xs.grad).any() or torch.isnan(x.float()).any()
    except (ValueError, TypeError):
        pass
    try:
        y = ops.fake_quant_pact(x, scale, 4)
        assert torch.equal(torch.isnan(y.float()), torch.isnan(x.float()))
    except (ValueError, TypeError):
        pass


@FUZZ
@given(x=tensors(), scale=scales, grid=grids, drop_p=st.sampled_from([0.0, 1e-7, 0.5, 1.0]),
       seed=st.integers(0, 2**63 - 1))
def test_fuzz_fake_quant_lsq_qdrop(x, scale, grid, drop_p, seed):
    # Elements QDrop keeps are x itself (NaN and inf included), the others exactly fake_quant_lsq's output.
    qmin, qmax = grid
    s, z = torch.tensor([scale]), torch.zeros(1)
    try:
        y = ops.fake_quant_lsq_qdrop(x, s, z, qmin, qmax, drop_p=drop_p, seed=seed)
    except (ValueError, TypeError):
        with pytest.raises((ValueError, TypeError)):
            ops.fake_quant_lsq(x, s, z, qmin, qmax)
        return
    keep = reference.qdrop_keep_fp(x.shape, drop_p, seed)
    expected = torch.where(keep, x, ops.fake_quant_lsq(x, s, z, qmin, qmax))
    assert torch.equal(y.isnan(), expected.isnan()) and torch.equal(y[~y.isnan()], expected[~expected.isnan()])


@FUZZ
@given(x=tensors(), bins=st.sampled_from([1, 2, 7, 256, 2048]),
       bounds=st.one_of(st.none(), st.tuples(floats(), floats())), per_channel=st.booleans())
def test_fuzz_histogram(x, bins, bounds, per_channel):
    axis = 0 if per_channel and x.dim() >= 1 else None
    lo, hi = bounds if bounds is not None else (None, None)
    try:
        counts, lo_t, hi_t = ops.histogram_range(x, bins, lo, hi, axis=axis)
    except (ValueError, TypeError):
        finite = x.numel() > 0 and bool(torch.isfinite(x.float()).all())
        if bounds is not None:
            finite = finite and all(abs(v) < float("inf") for v in bounds) and lo < hi
        assert not finite, "a valid histogram raised"
        return
    assert int(counts.sum()) == x.numel() and bool((counts >= 0).all())
    assert torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all() and bool((lo_t < hi_t).all())


@FUZZ
@given(x=tensors(dtypes=(torch.float32,)), grid=grids, symmetric=st.booleans(), per_channel=st.booleans())
def test_fuzz_range_search(x, grid, symmetric, per_channel):
    qmin, qmax = grid
    axis = 0 if per_channel and x.dim() >= 1 else None
    try:
        scale, zp, _ = ops.range_search(x, qmin, qmax, axis=axis, symmetric=symmetric, num_candidates=8)
    except (ValueError, TypeError):
        return
    assert torch.isfinite(scale).all() and torch.isfinite(1 / scale).all() and bool((scale > 0).all())
    assert torch.isfinite(scale * (qmax - qmin)).all()
    assert bool(((zp >= qmin) & (zp <= qmax)).all())


ESTIMATORS = {
    "minmax": lambda: calib.MinMaxEstimator(),
    "minmax_sym_per_channel": lambda: calib.MinMaxEstimator(axis=0, symmetric=True),
    "percentile": lambda: calib.PercentileEstimator(bins=64),
    "percentile_asym_per_channel": lambda: calib.PercentileEstimator(axis=0, bins=64, symmetric=False),
    "histogram_lp": lambda: calib.HistogramLpEstimator(bins=64, num_candidates=8),
    "entropy": lambda: calib.EntropyEstimator(bins=256),
    "mse": lambda: calib.MSEEstimator(axis=None, num_candidates=8),
    "sawb": lambda: calib.SAWBEstimator(axis=None),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_fuzz_estimators(name):
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(batches=st.lists(tensors(dtypes=(torch.float32,)), min_size=1, max_size=3), grid=grids)
    def run(batches, grid):
        qmin, qmax = grid
        if name == "sawb":
            qmin, qmax = -128, 127
        est = ESTIMATORS[name]()
        seen = []
        for b in batches:
            if est.axis is not None and (b.dim() == 0 or (seen and b.shape[0] != seen[0].shape[0])):
                continue
            try:
                est.observe(b)
                seen.append(b)
            except (ValueError, TypeError):
                assert b.numel() == 0 or not bool(torch.isfinite(b).all()), "finite data rejected"
        if not seen:
            return
        scale, zp = est.qparams(qmin, qmax)
        assert torch.isfinite(scale).all() and bool((scale > 0).all()), "bad scale"
        assert torch.isfinite(1 / scale).all() and torch.isfinite(scale * (qmax - qmin)).all(), "unusable scale"
        assert bool(((zp >= qmin) & (zp <= qmax)).all())
        x = seen[-1]
        y = ops.fake_quant(x, scale if scale.numel() > 1 else scale.reshape(1), zp if zp.numel() > 1 else zp.reshape(1),
                           qmin, qmax, axis=0 if scale.numel() > 1 else None)
        assert torch.isfinite(y).all(), "calibrate-then-quantize gave NaN/inf"

    run()


def test_crash_isolated_run_of_every_op_and_estimator():
    """The nastiest inputs per op/estimator in a child process: it must exit normally (a segfault
    is a negative return code), and report each target as done."""
    script = os.path.join(os.path.dirname(__file__), "fuzz_crash_cases.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
                                                       + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300, env=env)
    started = [l.split()[1] for l in proc.stdout.splitlines() if l.startswith("start ")]
    done = [l.split()[1] for l in proc.stdout.splitlines() if l.startswith("done ")]
    assert proc.returncode == 0, (
        f"crash-case run exited with {proc.returncode} during {started[-1] if started else '?'}:\n{proc.stderr[-3000:]}")
    sys.path.insert(0, os.path.dirname(script))
    import fuzz_crash_cases
    assert done == list(fuzz_crash_cases.targets())
    for line in proc.stdout.splitlines():
        if line.startswith("done "):
            _, name, n, raised = line.split()
            assert int(n) > 0 and 0 <= int(raised) < int(n), line  # some cases run through, some raise
