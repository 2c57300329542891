"""LSQ and PACT: forward bit-exact, gradients against ATen's learnable ops and the float64 reference."""

import pytest
import torch

from conftest import make_layout
from pyquant import ops, reference


def lsq_inputs(shape, axis, qmin, qmax, zp_zero=False):
    x = torch.randn(shape) * 0.5
    channels = 1 if axis is None else shape[axis]
    scale = (torch.rand(channels) * 0.05 + 0.02).requires_grad_(True)
    if zp_zero:
        zp = torch.zeros(channels)
    else:
        # Away from .5 so ATen's and our zero-point rounding agree (ATen's backward rounds half up).
        zp = (torch.randint(qmin + 2, qmax - 1, (channels,)).float() + torch.rand(channels) * 0.6 - 0.3)
    return x, scale, zp.requires_grad_(True)


def aten_lsq(x, scale, zp, qmin, qmax, axis, grad_factor):
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, grad_factor)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zp, axis, qmin, qmax, grad_factor)


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("grid", [(-128, 127), (0, 15), (-2, 1)])
def test_lsq_matches_aten(axis, grid):
    qmin, qmax = grid
    x, scale, zp = lsq_inputs((6, 5, 11), axis, qmin, qmax, zp_zero=True)
    grad_factor = 0.7
    x1 = x.clone().requires_grad_(True)
    y = ops.fake_quant_lsq(x1, scale, zp, qmin, qmax, axis=axis, grad_factor=grad_factor)
    x2 = x.clone().requires_grad_(True)
    s2, z2 = scale.detach().clone().requires_grad_(True), zp.detach().clone().requires_grad_(True)
    y2 = aten_lsq(x2, s2, z2, qmin, qmax, axis, grad_factor)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    g = torch.randn_like(x)
    dx, ds, dz = torch.autograd.grad(y, (x1, scale, zp), g)
    dx2, ds2, dz2 = torch.autograd.grad(y2, (x2, s2, z2), g)
    torch.testing.assert_close(dx, dx2, rtol=0, atol=0)
    # Reduction order differs (ATen: float32 sum of a materialized tensor; ours: blocked float/double).
    torch.testing.assert_close(ds, ds2.reshape(ds.shape), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dz, dz2.reshape(dz.shape), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [None, 1, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lsq_matches_float64_reference(axis, layout, dtype):
    qmin, qmax = -8, 7
    x, scale, zp = lsq_inputs((3, 8, 6, 10), axis, qmin, qmax)
    x = make_layout(x.to(dtype), layout).requires_grad_(True)
    y = ops.fake_quant_lsq(x, scale, zp, qmin, qmax, axis=axis, grad_factor=0.25)
    torch.testing.assert_close(y, reference.fake_quant(x.detach(), scale.detach(), zp.detach(), qmin, qmax, axis,
                                                       lsq_rounding=True), rtol=0, atol=0)
    g = torch.randn(x.shape).to(dtype)
    dx, ds, dz = torch.autograd.grad(y, (x, scale, zp), g)
    rdx, rds, rdz = reference.lsq_backward(g, x.detach(), scale.detach(), zp.detach(), qmin, qmax, axis, 0.25)
    torch.testing.assert_close(dx, rdx, rtol=0, atol=0)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(ds.double(), rds, rtol=tol, atol=tol)
    torch.testing.assert_close(dz.double(), rdz, rtol=tol, atol=tol)


def test_lsq_grads_deterministic_across_thread_counts():
    x = torch.randn(8, 64, 40, 40)
    scale = torch.rand(64) * 0.05 + 0.01
    zp = torch.zeros(64)
    g = torch.randn_like(x)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.pyquant.fake_quant_lsq_backward(g, x, scale, zp, -128, 127, 1, 1.0))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_lsq_integer_zero_point_gets_no_gradient():
    x = torch.randn(20)
    scale = torch.tensor([0.1], requires_grad=True)
    y = ops.fake_quant_lsq(x, scale, torch.tensor([0], dtype=torch.int32), -8, 7)
    y.sum().backward()
    assert scale.grad is not None and scale.grad.shape == (1,)


def test_lsq_grad_factor_formula():
    assert ops.lsq_grad_factor(100, 127) == pytest.approx(1 / (100 * 127) ** 0.5)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [None, 1])
def test_pact_forward_and_grads(bits, axis):
    x = (torch.randn(4, 6, 9) * 2).requires_grad_(True)
    alpha = (torch.rand(1 if axis is None else 6) + 0.5).requires_grad_(True)
    y = ops.fake_quant_pact(x, alpha, bits, axis=axis)
    torch.testing.assert_close(y, reference.pact(x.detach(), alpha.detach(), bits, axis), rtol=0, atol=0)
    # Same forward as fake_quant with scale alpha / n on [0, n].
    n = 2**bits - 1
    s = alpha.detach() / n
    torch.testing.assert_close(
        y, ops.fake_quant(x.detach(), s, torch.zeros_like(s, dtype=torch.int32), 0, n, axis=axis), rtol=0, atol=0)
    g = torch.randn_like(x)
    dx, da = torch.autograd.grad(y, (x, alpha), g)
    rdx, rda = reference.pact_backward(g, x.detach(), alpha.detach(), bits, axis)
    torch.testing.assert_close(dx, rdx, rtol=0, atol=0)
    torch.testing.assert_close(da.double(), rda, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")
def test_pact_gradcheck_in_smooth_regime():
    # Where every x is clipped (x >= alpha or x < 0) PACT is exactly linear in alpha (y = alpha or 0)
    # and constant in x: finite differences must reproduce the analytic gradients.
    x = torch.cat([torch.rand(20) + 2.0, -torch.rand(20) - 0.1]).requires_grad_(True)
    alpha = torch.tensor([1.0], requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.fake_quant_pact(a, b, 4), (x, alpha), eps=1e-2, atol=1e-3,
                                    rtol=1e-3, fast_mode=False)


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")
def test_lsq_gradcheck_in_clipped_regime():
    # Outside the grid y = (qmax - z) * s or (qmin - z) * s: linear in s, so LSQ's scale gradient is the
    # true derivative there.
    x = torch.cat([torch.rand(16) + 5.0, -torch.rand(16) - 5.0]).requires_grad_(True)
    scale = torch.tensor([0.1], requires_grad=True)
    zp = torch.tensor([0.0])
    assert torch.autograd.gradcheck(lambda a, s: ops.fake_quant_lsq(a, s, zp, -8, 7), (x, scale), eps=1e-3,
                                    atol=1e-3, rtol=1e-3, fast_mode=False)


def test_fake_quant_backward_is_linear_in_grad():
    # The STE backward is linear in the incoming gradient: gradgradcheck-style check in float32.
    x = torch.randn(50, requires_grad=True)
    y = ops.fake_quant(x, 0.1, 0, -16, 15)
    g = torch.randn(50)
    (d1,) = torch.autograd.grad(y, x, g, retain_graph=True)
    (d2,) = torch.autograd.grad(y, x, 3 * g)
    torch.testing.assert_close(d2, 3 * d1, rtol=0, atol=0)
