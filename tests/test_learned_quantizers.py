"""Learned quantizers (pyquant.quant.learned) against their float64 oracles (pyquant.reference.learned):
forward values and the gradients of the input and of every learned parameter."""

import math

import pytest
import torch

from pyquant.calib.sawb import SAWB_COEFFICIENTS
from pyquant.quant.learned import LSQQuantizer, PACTQuantizer, QILQuantizer, SAWBQuantizer
from pyquant.reference import learned as ref


def _grads(fn, x, params):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    gs = torch.autograd.grad((y * gy).sum(), [x] + params)
    return y.detach(), gs


def _away_from_ties(x, scale, axis=None):
    # nudge values off rounding ties, where float32 and float64 may round differently
    s = scale.reshape([-1 if i == axis else 1 for i in range(x.dim())]) if axis is not None else scale
    frac = (x / s) - torch.floor(x / s)
    return torch.where((frac - 0.5).abs() < 1e-3, x + 0.01 * s, x)


@pytest.mark.parametrize("axis", [None, 0])
def test_lsq_weights_forward_and_gradients_match_float64(axis):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    q = LSQQuantizer.from_tensor(w, 4, signed=True, axis=axis)
    # the paper's initialisation and gradient scale
    dims = (1, 2, 3) if axis == 0 else (0, 1, 2, 3)
    torch.testing.assert_close(q.scale.detach(), (2 * w.abs().mean(dim=dims) / math.sqrt(7)).reshape(-1))
    n = w[0].numel() if axis == 0 else w[0].numel()
    assert q.grad_factor(w) == pytest.approx(1 / math.sqrt(n * 7))
    w = _away_from_ties(w, q.scale.detach(), axis)
    y, (dx, ds) = _grads(q, w, [q.scale])
    s64 = q.scale.detach().double().requires_grad_(True)
    y64, (dx64, ds64) = _grads(lambda t: ref.lsq(t, s64, torch.zeros(1, dtype=torch.float64), -8, 7, axis,
                                                 q.grad_factor(w)), w.double(), [s64])
    torch.testing.assert_close(y.double(), y64, atol=1e-6, rtol=0)
    torch.testing.assert_close(dx.double(), dx64)
    torch.testing.assert_close(ds.double(), ds64, rtol=1e-5, atol=1e-7)


def test_lsq_plus_activation_offset_forward_and_gradients_match_float64():
    torch.manual_seed(1)
    x = torch.randn(8, 5, 4, 4) * 2 + 0.5  # a shifted activation (e.g. before a ReLU-free layer)
    q = LSQQuantizer.from_tensor(x, 3, signed=False, learn_offset=True)
    s0, z0 = q.scale.detach(), q.zero_point.detach()
    # min maps to the lowest level, max to the highest
    assert float(s0) == pytest.approx(float(x.max() - x.min()) / 7, rel=1e-5)
    assert float(z0) == pytest.approx(float(-x.min() / s0), rel=1e-5)
    with torch.no_grad():
        q.zero_point.fill_(float(torch.round(z0)) + 0.2)  # off a rounding tie of the offset
    x = _away_from_ties(x, s0)
    y, (dx, ds, dz) = _grads(q, x, [q.scale, q.zero_point])
    s64 = s0.double().requires_grad_(True)
    z64 = q.zero_point.detach().double().requires_grad_(True)
    y64, (dx64, ds64, dz64) = _grads(lambda t: ref.lsq(t, s64, z64, 0, 7, None, q.grad_factor(x)), x.double(),
                                     [s64, z64])
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=0)
    torch.testing.assert_close(dx.double(), dx64)
    torch.testing.assert_close(ds.double(), ds64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dz.double(), dz64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [None, 1])
def test_pact_forward_gradients_and_l2_decay_match_float64(axis):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 5, 5) * 3
    q = PACTQuantizer.from_tensor(x.relu() * 0.7, 4, axis=axis)
    assert PACTQuantizer(4).alpha.item() == 10.0  # the paper's start
    x = _away_from_ties(x, q.alpha.detach() / 15, axis)
    y, (dx, da) = _grads(q, x, [q.alpha])
    a64 = q.alpha.detach().double().requires_grad_(True)
    y64, (dx64, da64) = _grads(lambda t: ref.pact(t, a64, 4, axis), x.double(), [a64])
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=0)
    torch.testing.assert_close(dx.double(), dx64)
    torch.testing.assert_close(da.double(), da64, rtol=1e-5, atol=1e-6)
    reg = q.regularization()
    (g,) = torch.autograd.grad(reg, [q.alpha])
    torch.testing.assert_close(g, 2 * 2e-4 * q.alpha.detach())


@pytest.mark.parametrize("signed", [True, False])
def test_qil_forward_and_gradients_of_interval_and_gamma_match_float64(signed):
    torch.manual_seed(3)
    x = torch.randn(6, 4, 3, 3)
    if not signed:
        x = x.relu()
    q = QILQuantizer(3, signed, center=0.8, half_width=0.6, gamma=1.3 if signed else 1.0)
    params = [q.center, q.half_width] + ([q.gamma] if signed else [])
    y, grads = _grads(q, x, params)
    p64 = [p.detach().double().requires_grad_(True) for p in params]
    gamma64 = p64[2] if signed else torch.ones(1, dtype=torch.float64)
    y64, grads64 = _grads(lambda t: ref.qil(t, p64[0], p64[1], gamma64, 3, signed), x.double(), p64)
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=0)
    for g, g64 in zip(grads, grads64):
        torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-5)
    # pruning below c - d, clipping above c + d
    mag = x.abs()
    assert bool((y[mag < 0.2] == 0).all())
    assert torch.allclose(y[mag > 1.4].abs(), torch.tensor(1.4))
    init = QILQuantizer.from_tensor(x, 3, signed)
    assert float((init.center - init.half_width).detach()) == 0.0 and float((init.center + init.half_width).detach()) == pytest.approx(
        float(x.abs().max()))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_sawb_forward_and_gradient_match_float64(bits):
    torch.manual_seed(4)
    w = torch.randn(8, 4, 3, 3)
    q = SAWBQuantizer(bits, axis=0)
    w = _away_from_ties(w, q.scale(w), 0)
    y, (dw,) = _grads(q, w, [])
    c1, c2 = SAWB_COEFFICIENTS[bits]
    y64, (dw64,) = _grads(lambda t: ref.sawb(t, bits, 0, c1, c2), w.double(), [])
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=0)
    torch.testing.assert_close(dw.double(), dw64)


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="bits"):
        LSQQuantizer(1, True, torch.ones(1))
    with pytest.raises(ValueError, match="scale"):
        LSQQuantizer(4, True, torch.zeros(1))
    with pytest.raises(ValueError, match="alpha"):
        PACTQuantizer(4, alpha=-1.0)
