"""fake_quant: bit-exact against ATen's fake-quant ops and the reference, STE backward, out=, layouts."""

import pytest
import torch

from conftest import make_layout
from pyquant import ops, reference

BITS = [2, 3, 4, 5, 8, 16]
LAYOUTS = ["contiguous", "noncontiguous", "channels_last", "transposed"]


def grid(bits: int, signed: bool):
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def make_input(shape, qmin, qmax, scale_hi=0.1, dtype=torch.float32):
    """Values spanning the grid and past both ends, plus exact half-way points (ties)."""
    levels = qmax - qmin
    x = torch.randn(shape) * scale_hi * levels / 3
    flat = x.view(-1)
    n_ties = flat.numel() // 4
    ties = (torch.randint(-levels, levels, (n_ties,)).float() + 0.5) * scale_hi
    flat[:n_ties] = ties
    return x.to(dtype)


def channel_params(channels, qmin, qmax, float_zp=False):
    scale = torch.rand(channels) * 0.09 + 0.01
    if float_zp:
        zp = torch.rand(channels) * (qmax - qmin) + qmin
    else:
        zp = torch.randint(qmin, qmax + 1, (channels,), dtype=torch.int32)
    return scale, zp


def aten_fake_quant(x, scale, zp, qmin, qmax, axis):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("axis", [None, 0, 1, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_aten_bit_exact(bits, signed, axis, layout):
    qmin, qmax = grid(bits, signed)
    base = make_input((4, 6, 5, 7), qmin, qmax, scale_hi=0.05)
    x = make_layout(base, layout)
    channels = 1 if axis is None else x.shape[axis]
    scale, zp = channel_params(channels, qmin, qmax)
    y = ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis)
    expected = aten_fake_quant(base, scale, zp, qmin, qmax, axis)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    if layout in ("channels_last", "transposed"):
        assert y.stride() == x.stride(), "dense inputs keep their memory layout"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("axis", [None, 1])
def test_reduced_precision_matches_aten(dtype, axis):
    qmin, qmax = -128, 127
    x = make_input((8, 16, 9, 9), qmin, qmax, scale_hi=0.02, dtype=dtype)
    channels = 1 if axis is None else 16
    scale, zp = channel_params(channels, qmin, qmax)
    y = ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis)
    assert y.dtype == dtype
    torch.testing.assert_close(y, aten_fake_quant(x, scale, zp, qmin, qmax, axis), rtol=0, atol=0)
    torch.testing.assert_close(y, reference.fake_quant(x, scale, zp, qmin, qmax, axis), rtol=0, atol=0)


@pytest.mark.parametrize("axis", [0, 1])
def test_float_zero_point_matches_aten(axis):
    qmin, qmax = 0, 255
    x = make_input((12, 10, 6), qmin, qmax, scale_hi=0.05)
    scale, zp = channel_params(x.shape[axis], qmin, qmax, float_zp=True)
    y = ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis)
    expected = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(y, reference.fake_quant(x, scale, zp, qmin, qmax, axis), rtol=0, atol=0)


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_tensor_parallel_path(axis, layout):
    # Large enough for at::parallel_for to split it, with ragged block ends.
    base = make_input((3, 64, 37, 41), -8, 7, scale_hi=0.1)
    x = make_layout(base, layout)
    scale, zp = channel_params(1 if axis is None else 64, -8, 7)
    y = ops.fake_quant(x, scale, zp, -8, 7, axis=axis)
    torch.testing.assert_close(y, aten_fake_quant(base, scale, zp, -8, 7, axis), rtol=0, atol=0)


def test_reference_matches_aten():
    # The oracle itself is held to ATen.
    for axis in (None, 2):
        x = make_input((5, 4, 33), -128, 127)
        scale, zp = channel_params(1 if axis is None else 33, -128, 127)
        torch.testing.assert_close(
            reference.fake_quant(x, scale, zp, -128, 127, axis), aten_fake_quant(x, scale, zp, -128, 127, axis),
            rtol=0, atol=0,
        )


@pytest.mark.parametrize("axis", [None, 1, -1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mask_matches_aten_cachemask(axis, layout):
    qmin, qmax = -8, 7
    base = make_input((3, 5, 4, 70), qmin, qmax)
    x = make_layout(base, layout)
    channels = 1 if axis is None else x.shape[axis]
    scale, zp = channel_params(channels, qmin, qmax)
    y, mask = torch.ops.pyquant.fake_quant(x, scale, zp, qmin, qmax, axis, True)
    if axis is None:
        _, expected = torch.ops.aten.fake_quantize_per_tensor_affine_cachemask(base, float(scale), int(zp), qmin, qmax)
    else:
        _, expected = torch.ops.aten.fake_quantize_per_channel_affine_cachemask(base, scale, zp, axis % 4, qmin, qmax)
    assert mask.dtype == torch.uint8 and mask.numel() == (x.numel() + 63) // 64 * 8
    torch.testing.assert_close(ops.unpack_mask(mask, y), expected, rtol=0, atol=0)


@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
def test_backward_is_straight_through_mask(axis, layout, grad_layout):
    qmin, qmax = 0, 15
    base = make_input((2, 6, 5, 9), qmin, qmax)
    channels = 1 if axis is None else 6
    scale, zp = channel_params(channels, qmin, qmax)
    x = make_layout(base, layout).requires_grad_(True)
    y = ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis)
    grad = make_layout(torch.randn_like(base), grad_layout)
    (dx,) = torch.autograd.grad(y, x, grad)

    x_ref = base.clone().requires_grad_(True)
    y_ref = aten_fake_quant(x_ref, scale, zp, qmin, qmax, axis)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=0)
    torch.testing.assert_close(y.detach(), y_ref.detach(), rtol=0, atol=0)


def test_autograd_saves_one_bit_per_element():
    # Memory the graph keeps for backward: the bit-packed mask only (ATen keeps a 1-byte bool mask).
    saved = []
    x = torch.randn(64, 128, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.fake_quant(x, torch.rand(128) + 0.01, torch.zeros(128, dtype=torch.int32), -128, 127, axis=1)
    assert sum(t.numel() * t.element_size() for t in saved) == x.numel() // 8


def test_out_buffer_and_inplace():
    qmin, qmax = -128, 127
    x = make_input((16, 8, 5, 5), qmin, qmax)
    scale, zp = channel_params(8, qmin, qmax)
    expected = aten_fake_quant(x, scale, zp, qmin, qmax, 1)
    out = torch.empty_like(x)
    ret = ops.fake_quant(x, scale, zp, qmin, qmax, axis=1, out=out)
    assert ret is out
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # out with another layout than x
    out_cl = torch.empty_like(x).contiguous(memory_format=torch.channels_last)
    ops.fake_quant(x, scale, zp, qmin, qmax, axis=1, out=out_cl)
    torch.testing.assert_close(out_cl, expected, rtol=0, atol=0)
    # in place
    x2 = x.clone()
    ops.fake_quant(x2, scale, zp, qmin, qmax, axis=1, out=x2)
    torch.testing.assert_close(x2, expected, rtol=0, atol=0)


def test_out_rejects_autograd_and_bad_buffers():
    x = torch.randn(4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="out"):
        ops.fake_quant(x, 0.1, 0, -128, 127, out=torch.empty(4, 4))
    x = x.detach()
    with pytest.raises(ValueError, match="out"):
        ops.fake_quant(x, 0.1, 0, -128, 127, out=torch.empty(4, 5))
    with pytest.raises(TypeError, match="out"):
        ops.fake_quant(x, 0.1, 0, -128, 127, out=torch.empty(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="out"):
        ops.fake_quant(x, 0.1, 0, -128, 127, out=torch.empty(1).expand(4, 4))


def test_python_number_params():
    x = torch.randn(100)
    y = ops.fake_quant(x, 0.05, 3, -128, 127)
    torch.testing.assert_close(y, torch.fake_quantize_per_tensor_affine(x, 0.05, 3, -128, 127), rtol=0, atol=0)


def test_scalar_and_empty_inputs():
    x0 = torch.tensor(0.37)
    torch.testing.assert_close(ops.fake_quant(x0, 0.1, 0, -128, 127),
                               torch.fake_quantize_per_tensor_affine(x0, 0.1, 0, -128, 127), rtol=0, atol=0)
    empty = torch.empty(0, 3)
    assert ops.fake_quant(empty, 0.1, 0, -128, 127).shape == (0, 3)
    y = ops.fake_quant(empty, torch.rand(3) + 0.1, torch.zeros(3, dtype=torch.int32), -128, 127, axis=1)
    assert y.shape == (0, 3)
    no_channels = torch.empty(2, 0)
    assert ops.fake_quant(no_channels, torch.empty(0), torch.empty(0, dtype=torch.int32), -128, 127, axis=1).shape == (2, 0)
    e = torch.empty(0, requires_grad=True)
    y = ops.fake_quant(e, 0.1, 0, -128, 127)
    y.sum().backward()
    assert e.grad.shape == (0,)


def test_nan_and_inf_behaviour():
    # Documented: NaN propagates with zero gradient; +-Inf saturate to the grid ends with zero gradient.
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.26, -0.26], requires_grad=True)
    y = ops.fake_quant(x, torch.tensor([0.1]), torch.tensor([1], dtype=torch.int32), -8, 7)
    assert torch.isnan(y[0])
    assert y[1].item() == pytest.approx((7 - 1) * 0.1)
    assert y[2].item() == pytest.approx((-8 - 1) * 0.1)
    torch.testing.assert_close(y[3:].detach(), torch.tensor([0.3, -0.3]), rtol=0, atol=1e-7)
    y.backward(torch.ones(5))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]), rtol=0, atol=0)


def float_zero_point_wide_grid_case():
    """A 16-bit grid with float zero-points and large levels, where the fused and the unfused
    ``x * inv_scale + zero_point`` round differently on some elements (asserted, so the case
    discriminates)."""
    g = torch.Generator().manual_seed(3)
    scale = 10 ** (torch.rand(5, generator=g) * 4 - 3)
    zp = torch.rand(5, generator=g) * 65535
    x = torch.randn(64, 5, 256, generator=g) * scale[None, :, None] * 65535 / 3
    return x, scale, zp


def check_float_zero_point_fusion():
    x, scale, zp = float_zero_point_wide_grid_case()
    inv = (1.0 / scale)[None, :, None]
    unfused = torch.round(x * inv + zp[None, :, None])
    fused = torch.round((x.double() * inv.double() + zp[None, :, None].double()).float())
    assert (unfused != fused).sum() >= 10, "the case no longer separates fused from unfused rounding"
    y = ops.fake_quant(x, scale, zp, 0, 65535, axis=1)
    assert torch.equal(y, torch.fake_quantize_per_channel_affine(x, scale, zp, 1, 0, 65535))
    assert torch.equal(y, reference.fake_quant(x, scale, zp, 0, 65535, 1))


def test_float_zero_point_rounding_matches_aten_on_wide_grids():
    """ATen fuses ``x * inv_scale + zero_point`` (one rounding) in its AVX2/AVX-512 builds and not in
    its portable one; pyquant and the reference follow it per CPU variant (the subprocess test below
    checks the other variants)."""
    check_float_zero_point_fusion()


@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_lower_cpu_variants_bit_exact(isa):
    """Every compiled CPU variant gives the same bits (ATEN_CPU_CAPABILITY selects it per process)."""
    import os
    import subprocess
    import sys

    script = r"""
import torch, pyquant
from pyquant import ops
assert pyquant.build_info()["cpu_isa"] == "%s", pyquant.build_info()
torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    x = (torch.randn(4, 24, 7, 9) * 3).to(dtype)
    for axis, layout in ((None, torch.contiguous_format), (1, torch.contiguous_format), (1, torch.channels_last)):
        c = 1 if axis is None else 24
        s = torch.rand(c) * 0.2 + 0.01
        z = torch.randint(-5, 5, (c,), dtype=torch.int32)
        xl = x.contiguous(memory_format=layout).requires_grad_(True)
        y = ops.fake_quant(xl, s, z, -16, 15, axis=axis)
        ref = (torch.fake_quantize_per_tensor_affine(x, float(s), int(z), -16, 15) if axis is None
               else torch.fake_quantize_per_channel_affine(x, s, z, 1, -16, 15))
        assert torch.equal(y, ref), (dtype, axis)
        g = torch.randn_like(x)
        (dx,) = torch.autograd.grad(y, xl, g)
        mask = pyquant.reference.fake_quant_mask(x, s, z, -16, 15, axis)
        assert torch.equal(dx, torch.where(mask, g, torch.zeros_like(g))), (dtype, axis)
        dxl, ds, dz = torch.ops.pyquant.fake_quant_lsq_backward(g, x, s, z.float(), -16, 15, axis, 1.0)
        rdx, rds, rdz = pyquant.reference.lsq_backward(g, x, s, z.float(), -16, 15, axis)
        assert torch.equal(dxl, rdx)
        torch.testing.assert_close(ds.double(), rds, rtol=1e-4, atol=1e-2)
    zf = torch.rand(24) * 20 - 10
    assert torch.equal(ops.fake_quant(x, s24 := torch.rand(24) * 0.2 + 0.01, zf, -16, 15, axis=1),
                       torch.fake_quantize_per_channel_affine(x, s24, zf, 1, -16, 15))
    alpha = torch.rand(24) + 0.5
    xp = x.float().requires_grad_(True)
    a = alpha.clone().requires_grad_(True)
    yp = ops.fake_quant_pact(xp, a, 3, axis=1)
    assert torch.equal(yp, pyquant.reference.pact(x.float(), alpha, 3, 1))
    gp = torch.randn_like(yp)
    dxp, dap = torch.autograd.grad(yp, (xp, a), gp)
    rdxp, rdap = pyquant.reference.pact_backward(gp, x.float(), alpha, 3, 1)
    assert torch.equal(dxp, rdxp)
    torch.testing.assert_close(dap.double(), rdap, rtol=1e-5, atol=1e-5)
from pyquant import reference
FUSION_CHECK
check_float_zero_point_fusion()
special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.25])
ys = ops.fake_quant(special, 0.1, 1, -8, 7)
assert torch.isnan(ys[0]) and abs(ys[1].item() - 0.6) < 1e-6 and abs(ys[2].item() + 0.9) < 1e-6
print("ok")
""" % isa
    import inspect

    script = script.replace("FUSION_CHECK", inspect.getsource(float_zero_point_wide_grid_case)
                            + inspect.getsource(check_float_zero_point_fusion))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
