"""The inputs most likely to crash each op and estimator, run by tests/test_fuzz.py in a subprocess
(a segfault or abort there shows as a negative return code instead of killing pytest).

``python fuzz_crash_cases.py`` runs every target; for each it prints ``done <target> <cases>
<raised>``: how many inputs it ran and how many raised a Python exception (the documented clear
errors). Anything but ValueError / TypeError / RuntimeError from a case is re-raised (exit code 1)."""

from __future__ import annotations

import sys

import torch

F32 = torch.finfo(torch.float32)
NAN, INF = float("nan"), float("inf")

# Values at the edges of float32: the overflow, NaN and subnormal paths.
EXTREMES = [0.0, -0.0, 1.0, -1.0, F32.max, -F32.max, F32.max / 2, F32.tiny, -F32.tiny, 1e-40, -1e-40, 1e-45, INF,
            -INF, NAN, 3.4e38 / 2048, 1e30, -1e30, 2.0 ** 24, 0.5]
SCALES = [1e-45, 1e-40, 2e-39, F32.tiny, 1e-30, 1e-8, 0.1, 1.0, 1e30, F32.max / 256, F32.max, 0.0, -1.0, INF, NAN]


def extreme_tensors():
    """Tensors built from the extremes: all one value, mixtures, empty, odd strides, half types."""
    out = [torch.tensor([v] * 8).reshape(2, 4) for v in EXTREMES]
    mix = torch.tensor(EXTREMES)
    finite = mix[torch.isfinite(mix)]
    out += [mix.reshape(4, 5), finite.reshape(-1, 1).repeat(1, 3), finite.repeat(2, 1).t(), finite[::3],
            torch.empty(0), torch.empty(2, 0), torch.zeros(3, 4), torch.full((64,), -F32.max),
            torch.linspace(-1, 1, 257) * F32.max, torch.linspace(0, 1, 100) * 1e-40]
    base = torch.randn(4, 6, 5)
    out += [base.transpose(0, 2), base[:, ::2, 1:], base.expand(2, 4, 6, 5)[1], base.contiguous(memory_format=torch.contiguous_format)]
    out += [t.to(torch.float16) for t in out[-6:-2]] + [t.to(torch.bfloat16) for t in out[-6:-2]]
    return out


def _run(fn) -> bool:
    """True when fn raised one of the documented error types."""
    try:
        fn()
    except (ValueError, TypeError, RuntimeError):
        return True
    return False


def target_fake_quant():
    from pyquant import ops
    n = raised = 0
    for x in extreme_tensors():
        for s in SCALES:
            for call in (
                lambda: ops.fake_quant(x, s, 0, -128, 127),
                lambda: ops.fake_quant(x, s, 3, 0, 255, out=torch.empty_like(x)),
                lambda: ops.fake_quant(x, torch.full((x.shape[0],), s) if x.dim() else s,
                                       torch.zeros(x.shape[0] if x.dim() else 1, dtype=torch.int32), -8, 7,
                                       axis=0 if x.dim() else None),
                lambda: ops.fake_quant(x.float().requires_grad_(), s, 0, -128, 127).sum().backward(),
            ):
                n += 1
                raised += _run(call)
    return n, raised


def _every_tensor_and_scale(make_call):
    """Runs ``make_call(x, s)()`` for every extreme tensor x and scale s; (cases, raised)."""
    n = raised = 0
    for x in extreme_tensors():
        for s in SCALES:
            n += 1
            raised += _run(make_call(x, s))
    return n, raised


def target_fake_quant_lsq():
    from pyquant import ops

    def make_call(x, s):
        def call():
            xs = x.float().requires_grad_()
            sc = torch.tensor([s], requires_grad=True)
            ops.fake_quant_lsq(xs, sc, torch.zeros(1, requires_grad=True), -128, 127).sum().backward()
        return call

    return _every_tensor_and_scale(make_call)


def target_fake_quant_pact():
    from pyquant import ops

    def make_call(x, a):
        def call():
            al = torch.tensor([a], requires_grad=True)
            ops.fake_quant_pact(x.float().requires_grad_(), al, 8).sum().backward()
        return call

    return _every_tensor_and_scale(make_call)


def target_histogram():
    from pyquant import ops
    n = raised = 0
    for x in extreme_tensors():
        for bins in (1, 3, 2048):
            for lo_hi in (None, (-1.0, 1.0), (-F32.max, F32.max), (0.0, F32.max / bins * 4), (0.0, 1e-40),
                          (1.0, 1.0), (NAN, 1.0), (-INF, INF)):
                def call():
                    if lo_hi is None:
                        c = ops.histogram(x, bins)
                    else:
                        c = ops.histogram(x, bins, *lo_hi)
                    assert int(c.sum()) == x.numel(), "histogram lost or invented counts"
                n += 1
                raised += _run(call)
            if x.dim() >= 1 and x.shape[0] > 0:
                n += 1
                raised += _run(lambda: ops.histogram(x, bins, axis=0))
    return n, raised


def target_range_search():
    from pyquant import ops
    n = raised = 0
    for x in extreme_tensors():
        for sym, grid in ((True, (-128, 127)), (False, (0, 255)), (True, (-2, 1))):
            for axis in (None, 0):
                n += 1
                raised += _run(lambda: ops.range_search(x, *grid, axis=axis if x.dim() else None, symmetric=sym,
                                                        num_candidates=10))
    return n, raised


def _estimator_target(make):
    from pyquant import ops
    n = raised = 0
    xs = extreme_tensors()
    for i, x in enumerate(xs):
        for grid in ((-128, 127), (0, 255), (-8, 7)):
            def call():
                est = make()
                est.observe(x)
                est.observe(xs[(i + 7) % len(xs)])
                scale, zp = est.qparams(*grid)
                assert bool(torch.isfinite(1 / scale).all()), "unusable scale"
                ops.fake_quant(torch.zeros(3), scale.reshape(-1)[:1], zp.reshape(-1)[:1], *grid)
            n += 1
            raised += _run(call)
    return n, raised


def _estimators():
    from pyquant import calib
    return {
        "minmax": lambda: calib.MinMaxEstimator(),
        "minmax_per_channel": lambda: calib.MinMaxEstimator(axis=0),
        "percentile": lambda: calib.PercentileEstimator(bins=64),
        "percentile_per_channel": lambda: calib.PercentileEstimator(axis=0, bins=64),
        "histogram_lp": lambda: calib.HistogramLpEstimator(bins=64, num_candidates=10),
        "entropy": lambda: calib.EntropyEstimator(bins=256),
        "mse": lambda: calib.MSEEstimator(axis=None, num_candidates=10),
        "sawb": lambda: calib.SAWBEstimator(axis=None),
    }


def target_int8_add():
    from pyquant import ops
    n = raised = 0
    a = torch.randint(0, 256, (4, 8), dtype=torch.uint8)
    for s in SCALES:
        for t in SCALES[::2]:
            n += 1
            raised += _run(lambda: ops.int8_add(a, s, 3, a, t, 0, s, 128))
    return n, raised


def target_squant_round():
    from pyquant import ops
    n = raised = 0
    for v in EXTREMES:
        for shape in ((2, 3, 3, 3), (2, 5)):
            x = torch.randn(shape)
            x.view(-1)[0] = v
            n += 1
            raised += _run(lambda: ops.squant_round(x, -128, 127))
    return n, raised


def target_bn_stat_loss():
    from pyquant import ops
    n = raised = 0
    for v in EXTREMES:
        x = torch.randn(2, 3, 4, 4)
        x.view(-1)[::5] = v
        for per_sample in (False, True):
            n += 1
            raised += _run(lambda: ops.bn_stat_loss(x.requires_grad_(), torch.zeros(3), torch.ones(3),
                                                    per_sample=per_sample).backward())
            n += 1
            raised += _run(lambda: ops.bn_stat_loss(torch.randn(2, 3, 4, 4), torch.full((3,), v), torch.full((3,), v)))
    return n, raised


def targets():
    out = {
        "fake_quant": target_fake_quant,
        "fake_quant_lsq": target_fake_quant_lsq,
        "fake_quant_pact": target_fake_quant_pact,
        "histogram": target_histogram,
        "range_search": target_range_search,
        "int8_add": target_int8_add,
        "squant_round": target_squant_round,
        "bn_stat_loss": target_bn_stat_loss,
    }
    for name, make in _estimators().items():
        out[f"estimator:{name}"] = lambda make=make: _estimator_target(make)
    return out


def main(names) -> int:
    torch.set_num_threads(1)
    table = targets()
    for name in names or list(table):
        print(f"start {name}", flush=True)
        n, raised = table[name]()
        print(f"done {name} {n} {raised}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
