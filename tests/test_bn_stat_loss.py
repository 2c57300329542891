"""bn_stat_loss: against the float64 reference (and ZeroQ's / GDFQ's own forms), gradients, opcheck,
hypothesis, numerics on offset inputs, thread-count determinism, layouts, CPU variants, bad input."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import make_layout
from pyquant import ops, reference


def bn_params(c, offset=0.0, dtype=torch.float32):
    rm = (torch.randn(c) * 0.5 + offset).to(dtype)
    rv = (torch.rand(c) * 2 + 0.1).to(dtype)
    return rm, rv


def margins(c, with_margin):
    if not with_margin:
        return None, None
    return torch.rand(c) * 0.3, torch.rand(c) * 0.2


def ref_loss_and_grad(x, *args, **kw):
    xr = x.detach().double().requires_grad_()
    loss = reference.bn_stat_loss(xr, *args, **kw)
    loss.backward()
    return loss.detach(), xr.grad


def op_loss_and_grad(x, *args, **kw):
    xo = x.detach().clone().requires_grad_()
    loss = ops.bn_stat_loss(xo, *args, **kw)
    loss.backward()
    return loss.detach(), xo.grad


@pytest.mark.parametrize("shape", [(8, 5, 6, 7), (3, 16, 1, 9), (16, 4), (2, 3, 4, 5, 6)])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("match_var", [False, True])
def test_matches_reference(shape, per_sample, unbiased, with_margin, match_var):
    if per_sample and len(shape) == 2 and unbiased:
        pytest.skip("one value per statistic: unbiased is rejected (tested below)")
    x = torch.randn(shape) * 1.3 + 0.2
    c = shape[1]
    rm, rv = bn_params(c)
    mm, sm = margins(c, with_margin)
    w = torch.rand(shape[0]) * 2 if per_sample else None
    kw = dict(eps=1e-5, per_sample=per_sample, unbiased=unbiased, mean_margin=mm, std_margin=sm, sample_weight=w,
              match_var=match_var)
    loss, grad = op_loss_and_grad(x, rm, rv, **kw)
    ref, ref_grad = ref_loss_and_grad(x, rm, rv, **kw)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


def test_matches_zeroq_own_loss_and_gdfq_mse():
    x = torch.randn(6, 8, 5, 5) * 2 + 0.5
    rm, rv = bn_params(8)
    # ZeroQ: per-sample, unbiased, std matching.
    ours = ops.bn_stat_loss(x, rm, rv, eps=1e-5, per_sample=True, unbiased=True)
    torch.testing.assert_close(ours.double(), reference.zeroq_own_loss(x, rm, rv, eps=1e-5), rtol=1e-6, atol=0)
    # GDFQ: batch statistics, biased variance, MSE over channels on mean and variance.
    ours = ops.bn_stat_loss(x, rm, rv, per_sample=False, match_var=True) / 8
    torch.testing.assert_close(ours.double(), reference.gdfq_bns_loss(x, rm, rv), rtol=1e-6, atol=0)


def test_known_value():
    # Two samples, one channel, values with known statistics: sample 0 = [1, 3] (mean 2, biased var 1),
    # sample 1 = [0, 0] (mean 0, var 0). Target mean 0, var 1 - eps with eps = 0 -> s = 1.
    x = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]]])
    rm, rv = torch.zeros(1), torch.ones(1)
    # per sample: ((2-0)^2 + (1-1)^2 + (0-0)^2 + (0-1)^2) / 2 = 2.5
    assert ops.bn_stat_loss(x, rm, rv, eps=0.0, per_sample=True).item() == 2.5
    # batch: values [1, 3, 0, 0]: mean 1, var 1.5 -> 1 + (sqrt(1.5) - 1)^2
    expected = 1.0 + (1.5**0.5 - 1.0) ** 2
    assert abs(ops.bn_stat_loss(x, rm, rv, eps=0.0).item() - expected) < 1e-7
    # margins: |2 - 0| - 1.5 = 0.5 -> 0.25 (sample 0); |0 - 1| - 0.5 = 0.5 -> 0.25 (sample 1); / 2
    mm, sm = torch.full((1,), 1.5), torch.full((1,), 0.5)
    assert ops.bn_stat_loss(x, rm, rv, eps=0.0, per_sample=True, mean_margin=mm, std_margin=sm).item() == 0.25
    # sample weights
    w = torch.tensor([2.0, 0.0])
    assert ops.bn_stat_loss(x, rm, rv, eps=0.0, per_sample=True, sample_weight=w).item() == 4.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_reduced_precision(dtype, per_sample):
    x = (torch.randn(4, 6, 8, 8) + 0.3).to(dtype)
    rm, rv = bn_params(6)
    loss, grad = op_loss_and_grad(x, rm, rv, per_sample=per_sample, unbiased=per_sample)
    ref, ref_grad = ref_loss_and_grad(x, rm, rv, per_sample=per_sample, unbiased=per_sample)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    # The statistics of the (exactly representable) bf16 values are computed in float64.
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-7)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=tol * ref_grad.abs().max().item())


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck_float64(per_sample):
    x = (torch.randn(3, 4, 3, 3, dtype=torch.float64) + 0.5).requires_grad_()
    rm, rv = bn_params(4, dtype=torch.float64)
    mm = torch.full((4,), 0.05, dtype=torch.float64)
    sm = torch.full((4,), 0.02, dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64) if per_sample else None

    def f(t):
        return ops.bn_stat_loss(t, rm, rv, 1e-3, per_sample, True, mm, sm, w)

    assert f(x).dtype == torch.float64
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda t: ops.bn_stat_loss(t, rm, rv, per_sample=per_sample, match_var=True),
                                    (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("per_sample", [False, True])
def test_opcheck(per_sample):
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    rm, rv = bn_params(3)
    mm, sm = margins(3, True)
    w = torch.rand(4) if per_sample else None
    torch.library.opcheck(torch.ops.pyquant.bn_stat_loss.default,
                          (x, rm, rv, 1e-5, per_sample, True, mm, sm, w, False))
    torch.library.opcheck(torch.ops.pyquant.bn_stat_loss.default, (x, rm, rv))
    _, stats = torch.ops.pyquant.bn_stat_loss(x.detach(), rm, rv, 1e-5, per_sample)
    torch.library.opcheck(torch.ops.pyquant.bn_stat_loss_backward.default,
                          (torch.tensor(1.5), x.detach(), stats, per_sample))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 7),
    hw=st.sampled_from([(1, 2), (3, 3), (5, 1), (2, 17), (23, 29)]),
    per_sample=st.booleans(),
    unbiased=st.booleans(),
    margin_scale=st.floats(0.0, 2.0),
    weighted=st.booleans(),
    offset=st.floats(-50.0, 50.0),
)
def test_hypothesis(n, c, hw, per_sample, unbiased, margin_scale, weighted, offset):
    if unbiased and not per_sample and n * hw[0] * hw[1] < 2:
        unbiased = False
    g = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randn((n, c) + hw, generator=g) * 3 + offset
    rm = torch.randn(c, generator=g) + offset
    rv = torch.rand(c, generator=g) * 4 + 0.01
    mm = torch.rand(c, generator=g) * margin_scale
    sm = torch.rand(c, generator=g) * margin_scale
    w = torch.rand(n, generator=g) * 3 if (weighted and per_sample) else None
    kw = dict(per_sample=per_sample, unbiased=unbiased, mean_margin=mm, std_margin=sm, sample_weight=w)
    loss, grad = op_loss_and_grad(x, rm, rv, **kw)
    ref, ref_grad = ref_loss_and_grad(x, rm, rv, **kw)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=1e-6)
    scale = max(ref_grad.abs().max().item(), 1e-12)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("per_sample", [False, True])
def test_large_offset_numerics(per_sample):
    # Values around 1e4 with unit spread: a float32 sum-of-squares would lose every digit of the
    # variance; float64 Welford keeps it. The reference sees the same (float32) values in float64.
    x = (torch.randn(8, 4, 32, 32, dtype=torch.float64) + 1e4).float()
    rm = torch.full((4,), 1e4)
    rv = torch.ones(4)
    _, stats = torch.ops.pyquant.bn_stat_loss(x, rm, rv, 1e-5, per_sample, False)
    xd = x.double()
    dims = (2, 3) if per_sample else (0, 2, 3)
    var, mean = torch.var_mean(xd, dim=dims, correction=0)
    torch.testing.assert_close(stats[:, 0], mean.reshape(-1), rtol=1e-14, atol=0)
    torch.testing.assert_close(stats[:, 1], var.reshape(-1), rtol=1e-10, atol=0)
    loss, grad = op_loss_and_grad(x, rm, rv, per_sample=per_sample)
    ref, ref_grad = ref_loss_and_grad(x, rm, rv, per_sample=per_sample)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-4 * ref_grad.abs().max().item())
    # The eager float32 baseline is visibly worse on the same input.
    v32 = torch.var(x, dim=dims, correction=0)
    assert (v32.double() - var).abs().max() > 100 * (stats[:, 1] - var.reshape(-1)).abs().max()


@pytest.mark.parametrize("per_sample", [False, True])
def test_thread_count_determinism(per_sample):
    x = torch.randn(16, 32, 20, 20) + 0.7
    rm, rv = bn_params(32)
    w = torch.rand(16) if per_sample else None
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(op_loss_and_grad(x, rm, rv, per_sample=per_sample, unbiased=True, sample_weight=w))
    finally:
        torch.set_num_threads(old)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert torch.equal(grad, results[0][1])


@pytest.mark.parametrize("layout", ["noncontiguous", "channels_last", "transposed"])
def test_layouts(layout):
    base = torch.randn(4, 6, 5, 7)
    rm, rv = bn_params(6)
    x = make_layout(base, layout)
    loss, grad = op_loss_and_grad(x, rm, rv, per_sample=True)
    ref_loss, ref_grad = op_loss_and_grad(base, rm, rv, per_sample=True)
    assert torch.equal(loss, ref_loss)
    assert torch.equal(grad, ref_grad)


def test_cpu_variants_agree():
    """Every compiled CPU variant (ATEN_CPU_CAPABILITY) gives the reference result."""
    code = (
        "import torch; from pyquant import ops, reference\n"
        "g = torch.Generator().manual_seed(3)\n"
        "x = torch.randn(5, 7, 9, 11, generator=g) + 2; rm = torch.randn(7, generator=g); rv = torch.rand(7, generator=g) + .1\n"
        "xo = x.clone().requires_grad_(); l = ops.bn_stat_loss(xo, rm, rv, per_sample=True, unbiased=True); l.backward()\n"
        "xr = x.double().requires_grad_(); r = reference.bn_stat_loss(xr, rm, rv, per_sample=True, unbiased=True); r.backward()\n"
        "assert abs(l.item() - r.item()) <= 1e-6 * r.item(), (l.item(), r.item())\n"
        "torch.testing.assert_close(xo.grad.double(), xr.grad, rtol=1e-5, atol=1e-7)\n"
        "import pyquant; print(pyquant.build_info()['cpu_isa'])\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen = set()
    for cap in ("default", "avx2"):
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, PYTHONPATH=root)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=root)
        assert out.returncode == 0, out.stderr
        seen.add(out.stdout.strip())
    assert "default" in seen


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input():
    x = torch.randn(4, 3, 5, 5)
    rm, rv = bn_params(3)
    with pytest.raises(ValueError, match="running_mean"):
        ops.bn_stat_loss(x, torch.zeros(4), rv)
    with pytest.raises(ValueError, match="running_var"):
        ops.bn_stat_loss(x, rm, torch.ones(2))
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        ops.bn_stat_loss(x, rm, torch.tensor([1.0, -0.5, 1.0]))
    with pytest.raises(ValueError, match="unbiased"):
        ops.bn_stat_loss(torch.randn(4, 3, 1, 1), rm, rv, per_sample=True, unbiased=True)
    with pytest.raises(ValueError, match="unbiased"):
        ops.bn_stat_loss(torch.randn(1, 3), rm, rv, unbiased=True)
    bad = x.clone()
    bad[2, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x contains NaN or Inf \(sample 2, channel 1\)"):
        ops.bn_stat_loss(bad, rm, rv, per_sample=True)
    with pytest.raises(ValueError, match="x contains NaN"):
        ops.bn_stat_loss(bad, rm, rv)
    with pytest.raises(ValueError, match="running_mean must be finite"):
        ops.bn_stat_loss(x, torch.tensor([0.0, float("nan"), 0.0]), rv)
    with pytest.raises(TypeError, match="x must be"):
        ops.bn_stat_loss(x.to(torch.int32), rm, rv)
    with pytest.raises(TypeError, match="running_mean"):
        ops.bn_stat_loss(x, rm.to(torch.int64), rv)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.bn_stat_loss(x.numpy(), rm, rv)
    with pytest.raises(ValueError, match="x must have shape"):
        ops.bn_stat_loss(torch.randn(5), rm, rv)
    with pytest.raises(ValueError, match="x must not be empty"):
        ops.bn_stat_loss(torch.randn(0, 3, 2, 2), rm, rv)
    with pytest.raises(ValueError, match="eps"):
        ops.bn_stat_loss(x, rm, rv, eps=-1.0)
    with pytest.raises(ValueError, match="mean_margin"):
        ops.bn_stat_loss(x, rm, rv, mean_margin=torch.zeros(5))
    with pytest.raises(ValueError, match="std_margin must be >= 0"):
        ops.bn_stat_loss(x, rm, rv, std_margin=torch.tensor([0.1, -0.1, 0.1]))
    with pytest.raises(ValueError, match="sample_weight must be a 1-d tensor with N"):
        ops.bn_stat_loss(x, rm, rv, per_sample=True, sample_weight=torch.ones(3))
    with pytest.raises(ValueError, match="sample_weight needs per_sample=True"):
        ops.bn_stat_loss(x, rm, rv, sample_weight=torch.ones(4))
    with pytest.raises(TypeError, match="sample_weight must be a torch.Tensor"):
        ops.bn_stat_loss(x, rm, rv, per_sample=True, sample_weight=[1.0] * 4)
    with pytest.raises(ValueError, match="stats must be the"):
        torch.ops.pyquant.bn_stat_loss_backward(torch.tensor(1.0), x, torch.zeros(3, 4, dtype=torch.float64), True)
