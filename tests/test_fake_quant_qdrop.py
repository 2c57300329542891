"""LSQ with QDrop fused in (ops.fake_quant_lsq_qdrop): forward bit-exact and gradients against the plain-PyTorch
reference (pyquant.reference.fake_quant_lsq_qdrop / lsq_qdrop_backward, which recompute the counter-based mask
with torch integer ops), the limits drop_p = 0 / 1, the mask's statistics and determinism, layouts, bad input. opcheck: in
test_fake_quant_contracts.py with the other fake-quant ops."""

import inspect
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import make_layout
from pyquant import ops, reference

pytestmark = pytest.mark.usefixtures("one_thread")

M32 = 0xFFFFFFFF


def lsq_inputs(shape, axis, qmin, qmax):
    """As test_fake_quant_learnable.lsq_inputs: a float zero-point away from .5, scales around 0.04."""
    x = torch.randn(shape) * 0.5
    channels = 1 if axis is None else shape[axis]
    scale = (torch.rand(channels) * 0.05 + 0.02).requires_grad_(True)
    zp = torch.randint(qmin + 2, qmax - 1, (channels,)).float() + torch.rand(channels) * 0.6 - 0.3
    return x, scale, zp.requires_grad_(True)


def off_grid_inputs(n):
    """x strictly inside the grid and a quarter step off every level, so fake_quant(x) != x everywhere:
    y == x then says exactly which elements QDrop kept in FP32."""
    scale = torch.tensor([0.125])
    levels = torch.randint(-7, 7, (n,)).float()
    return (levels + 0.25) * 0.125, scale, torch.zeros(1)


def python_keep_fp(index, drop_p, seed):
    """qdrop_math.h written once more with Python integers (no int64 wrap-around to worry about): checks
    the reference's 16-bit-split multiply and shifts."""
    def mix(v):
        v ^= v >> 16
        v = (v * 0x85EBCA6B) & M32
        v ^= v >> 13
        v = (v * 0xC2B2AE35) & M32
        return v ^ (v >> 16)

    lo, hi = index & M32, index >> 32
    a = mix((seed & M32) ^ mix((seed >> 32) ^ mix((hi + 0x9E3779B9) & M32)))
    b = mix((a + 0x9E3779B9) & M32)
    bits = mix(mix(lo ^ a) ^ b)
    return (bits >> 8) < math.ceil(drop_p * 2**24)


def test_reference_mask_matches_python_integers():
    index = [0, 1, 2, 3, 1000, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 3, 2**62 + 9]
    for seed in (0, 1, 12345, 2**31 - 2, 2**32 + 7, 2**63 - 1):
        for drop_p in (0.0, 1 / 3, 0.5, 0.9, 1.0):
            got = reference.qdrop_keep_fp_at(torch.tensor(index), drop_p, seed).tolist()
            assert got == [python_keep_fp(i, drop_p, seed) for i in index], (seed, drop_p)


def test_threshold_is_ceil_of_p_times_2_24():
    assert reference.qdrop_threshold(0.0) == 0
    assert reference.qdrop_threshold(1.0) == 2**24
    assert reference.qdrop_threshold(0.5) == 2**23
    assert reference.qdrop_threshold(2**-30) == 1  # any p > 0 can keep an element


def test_kernel_decides_u_less_than_p_exactly():
    # u = m / 2^24 for the hash's 24-bit value m: drop_p = u does not keep the element, the next double does.
    n, seed = 4096, 31
    x, scale, zp = off_grid_inputs(n)
    u24 = reference.qdrop_u24_at(torch.arange(n), seed)
    for i in (0, 1, 17, 1000, 4095):
        p = int(u24[i]) / 2**24
        kept_at = ops.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, drop_p=p, seed=seed) == x
        kept_above = ops.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, drop_p=math.nextafter(p, 1.0), seed=seed) == x
        assert not kept_at[i] and kept_above[i]
        assert torch.equal(kept_at, u24 < int(u24[i])) and torch.equal(kept_above, u24 <= int(u24[i]))


@pytest.mark.parametrize("axis", [None, 1, 3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference(axis, layout, dtype):
    qmin, qmax = -8, 7
    x, scale, zp = lsq_inputs((3, 8, 6, 10), axis, qmin, qmax)
    x = make_layout(x.to(dtype), layout).requires_grad_(True)
    drop_p, seed = 0.4, 987654321
    y = ops.fake_quant_lsq_qdrop(x, scale, zp, qmin, qmax, axis=axis, grad_factor=0.25, drop_p=drop_p, seed=seed)
    expected = reference.fake_quant_lsq_qdrop(x.detach(), scale.detach(), zp.detach(), qmin, qmax, axis, drop_p, seed)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # The output is laid out as torch.empty_like(x) (what the fake kernel promises)
    assert y.stride() == torch.empty_like(x).stride()
    g = torch.randn(x.shape).to(dtype)
    dx, ds, dz = torch.autograd.grad(y, (x, scale, zp), g)
    rdx, rds, rdz = reference.lsq_qdrop_backward(g, x.detach(), scale.detach(), zp.detach(), qmin, qmax, axis, 0.25,
                                                 drop_p, seed)
    torch.testing.assert_close(dx, rdx, rtol=0, atol=0)
    assert dx.stride() == torch.empty_like(x).stride()
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(ds.double(), rds, rtol=tol, atol=tol)
    torch.testing.assert_close(dz.double(), rdz, rtol=tol, atol=tol)


def test_mask_does_not_depend_on_memory_layout():
    x = torch.randn(2, 16, 5, 7)
    args = (torch.tensor([0.05]), torch.tensor([1.0]), -8, 7)
    a = ops.fake_quant_lsq_qdrop(x, *args, drop_p=0.5, seed=3)
    b = ops.fake_quant_lsq_qdrop(x.contiguous(memory_format=torch.channels_last), *args, drop_p=0.5, seed=3)
    assert torch.equal(a, b)


@pytest.mark.parametrize("axis", [None, 0, 2])
def test_drop_p_zero_is_fake_quant_lsq(axis):
    # Bit for bit, gradients included: the same LSQ arithmetic and the same fixed-block reductions.
    x, scale, zp = lsq_inputs((4, 12, 33), axis, -8, 7)
    x.requires_grad_(True)
    g = torch.randn(x.shape)
    y0 = ops.fake_quant_lsq(x, scale, zp, -8, 7, axis=axis, grad_factor=0.3)
    y1 = ops.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, axis=axis, grad_factor=0.3, drop_p=0.0, seed=11)
    assert torch.equal(y0, y1)
    for a, b in zip(torch.autograd.grad(y0, (x, scale, zp), g), torch.autograd.grad(y1, (x, scale, zp), g)):
        assert torch.equal(a, b)


def test_drop_p_one_is_identity():
    x = torch.cat([torch.randn(200) * 3, torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])])
    x.requires_grad_(True)
    scale = torch.tensor([0.1], requires_grad=True)
    zp = torch.tensor([0.4], requires_grad=True)
    y = ops.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, drop_p=1.0, seed=5)
    assert torch.equal(y.isnan(), x.isnan()) and torch.equal(y[~x.isnan()], x[~x.isnan()])
    g = torch.randn(x.shape)
    g[-1] = float("inf")  # kept elements add nothing to the parameters, not inf * 0 = NaN
    dx, ds, dz = torch.autograd.grad(y, (x, scale, zp), g)
    assert torch.equal(dx, g)
    assert torch.equal(ds, torch.zeros(1)) and torch.equal(dz, torch.zeros(1))


@pytest.mark.parametrize("drop_p", [0.05, 0.5, 0.8])
def test_keep_fraction_and_independence(drop_p):
    n = 1 << 20
    x, scale, zp = off_grid_inputs(n)
    keep = ops.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, drop_p=drop_p, seed=2024) == x
    assert torch.equal(keep, reference.qdrop_keep_fp((n,), drop_p, 2024))
    sigma = (drop_p * (1 - drop_p) / n) ** 0.5
    assert abs(keep.float().mean().item() - drop_p) < 5 * sigma
    # Neighbours are independent: pairs (i, i + 1) and (i, i + 64) both kept at rate p^2.
    for lag in (1, 16, 64):
        both = (keep[:-lag] & keep[lag:]).float().mean().item()
        assert abs(both - drop_p**2) < 5 * (drop_p**2 * (1 - drop_p**2) / n) ** 0.5, lag


def test_same_seed_same_mask_other_seed_other_mask():
    n, p = 1 << 18, 0.5
    x, scale, zp = off_grid_inputs(n)
    masks = [ops.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, drop_p=p, seed=s) == x for s in (7, 7, 8, 2**40 + 7)]
    assert torch.equal(masks[0], masks[1])
    sigma = (p**2 * (1 - p**2) / n) ** 0.5
    for other in masks[2:]:  # independent streams: both kept at rate p^2
        assert abs((masks[0] & other).float().mean().item() - p**2) < 5 * sigma


def test_deterministic_across_thread_counts():
    # Large enough for several parallel blocks, forward and backward; per-channel and per-tensor.
    x = torch.randn(8, 64, 24, 24)
    g = torch.randn_like(x)
    for axis, c in ((None, 1), (1, 64)):
        scale = torch.rand(c) * 0.05 + 0.01
        zp = torch.zeros(c)
        results = []
        old = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                y = torch.ops.pyquant.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, axis, 1.0, 0.5, 99)
                grads = torch.ops.pyquant.fake_quant_lsq_qdrop_backward(g, x, scale, zp, -8, 7, axis, 1.0, 0.5, 99)
                results.append((y, *grads))
        finally:
            torch.set_num_threads(old)
        for a, b in zip(*results):
            assert torch.equal(a, b)


def test_integer_zero_point_gets_no_gradient():
    x = torch.randn(50, requires_grad=True)
    scale = torch.tensor([0.1], requires_grad=True)
    y = ops.fake_quant_lsq_qdrop(x, scale, torch.tensor([0], dtype=torch.int32), -8, 7, drop_p=0.5, seed=1)
    y.sum().backward()
    assert scale.grad is not None and scale.grad.shape == (1,)
    assert torch.equal(x.grad, torch.where(reference.qdrop_keep_fp((50,), 0.5, 1), 1.0,
                                           reference.fake_quant_mask(x.detach(), scale.detach(),
                                                                     torch.zeros(1, dtype=torch.int32), -8, 7).float()))


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")
def test_gradcheck_in_clipped_regime():
    # Every x outside the grid: a kept element is y = x, a dropped one (qmax - z) * s or (qmin - z) * s; both are
    # linear, so the analytic gradients in x and scale are the true derivatives (as the LSQ gradcheck).
    x = torch.cat([torch.rand(24) + 5.0, -torch.rand(24) - 5.0]).requires_grad_(True)
    scale = torch.tensor([0.1], requires_grad=True)
    zp = torch.tensor([0.0])
    assert torch.autograd.gradcheck(lambda a, s: ops.fake_quant_lsq_qdrop(a, s, zp, -8, 7, drop_p=0.5, seed=42),
                                    (x, scale), eps=1e-3, atol=1e-3, rtol=1e-3, fast_mode=False)


@pytest.mark.parametrize("shape, axis", [((0, 4), None), ((0, 4), 1), ((3, 0, 2), 1)])
def test_empty_tensors(shape, axis):
    x = torch.randn(shape, requires_grad=True)
    c = 1 if axis is None else shape[axis]
    scale = torch.full((c,), 0.1, requires_grad=True)
    zp = torch.zeros(c, requires_grad=True)
    y = ops.fake_quant_lsq_qdrop(x, scale, zp, -8, 7, axis=axis, drop_p=0.5, seed=0)
    assert y.shape == x.shape
    dx, ds, dz = torch.autograd.grad(y, (x, scale, zp), torch.ones_like(y))
    assert dx.shape == x.shape and torch.equal(ds, torch.zeros(c)) and torch.equal(dz, torch.zeros(c))


X = torch.randn(5, 3)
S = torch.tensor([0.1])
Z = torch.tensor([0.0])


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(drop_p=-0.1), ValueError, "drop_p"),
        (dict(drop_p=1.5), ValueError, "drop_p"),
        (dict(drop_p=float("nan")), ValueError, "drop_p"),
        (dict(drop_p=float("inf")), ValueError, "drop_p"),
        (dict(drop_p="0.5"), TypeError, "drop_p"),
        (dict(drop_p=True), TypeError, "drop_p"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**63), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(seed=True), TypeError, "seed"),
        (dict(grad_factor=float("nan")), ValueError, "grad_factor"),
        (dict(scale=torch.tensor([-0.1])), ValueError, "scale"),
        (dict(scale=torch.tensor([0.1, 0.2])), ValueError, "scale"),
        (dict(zero_point=torch.tensor([float("inf")])), ValueError, "zero_point"),
        (dict(x=X.double()), TypeError, "x"),
        (dict(x=X.numpy()), TypeError, "x"),
        (dict(axis=5), ValueError, "axis"),
    ],
)
def test_bad_input_raises_naming_argument(kwargs, exc, name):
    args = dict(x=X, scale=S, zero_point=Z, axis=None, grad_factor=1.0, drop_p=0.5, seed=0)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        ops.fake_quant_lsq_qdrop(args["x"], args["scale"], args["zero_point"], -8, 7, axis=args["axis"],
                                 grad_factor=args["grad_factor"], drop_p=args["drop_p"], seed=args["seed"])


def test_raw_ops_check_their_arguments():
    # The C++ checks, for callers that skip the Python wrapper.
    with pytest.raises(ValueError, match="drop_p"):
        torch.ops.pyquant.fake_quant_lsq_qdrop(X, S, Z, -8, 7, None, 1.0, 1.01, 0)
    with pytest.raises(ValueError, match="seed"):
        torch.ops.pyquant.fake_quant_lsq_qdrop(X, S, Z, -8, 7, None, 1.0, 0.5, -3)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.pyquant.fake_quant_lsq_qdrop_backward(torch.randn(4), X, S, Z, -8, 7, None, 1.0, 0.5, 0)
    with pytest.raises(ValueError, match="drop_p"):
        torch.ops.pyquant.fake_quant_lsq_qdrop_backward(torch.randn(5, 3), X, S, Z, -8, 7, None, 1.0, float("nan"), 0)


def _variant_check():
    import torch
    from pyquant import ops, reference

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(4, 24, 7, 9) * 0.5).to(dtype)
        for axis, layout in ((None, torch.contiguous_format), (1, torch.contiguous_format), (3, torch.channels_last)):
            c = 1 if axis is None else x.shape[axis]
            s = torch.rand(c) * 0.05 + 0.02
            z = torch.randint(-5, 5, (c,)).float()
            xl = x.contiguous(memory_format=layout)
            y = ops.fake_quant_lsq_qdrop(xl, s, z, -16, 15, axis=axis, drop_p=0.3, seed=77)
            assert torch.equal(y, reference.fake_quant_lsq_qdrop(x, s, z, -16, 15, axis, 0.3, 77)), (dtype, axis)
            g = torch.randn(x.shape).to(dtype)
            dx, ds, dz = torch.ops.pyquant.fake_quant_lsq_qdrop_backward(g, xl, s, z, -16, 15, axis, 0.5, 0.3, 77)
            rdx, rds, rdz = reference.lsq_qdrop_backward(g, x, s, z, -16, 15, axis, 0.5, 0.3, 77)
            assert torch.equal(dx, rdx), (dtype, axis)
            torch.testing.assert_close(ds.double(), rds, rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(dz.double(), rdz, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_lower_cpu_variants_match_reference(isa):
    """The portable variant (the per-element header code the CUDA kernels run) and the AVX2 one; this
    process runs the machine's best."""
    script = inspect.getsource(_variant_check) + (
        "import pyquant\n"
        f"assert pyquant.build_info()['cpu_isa'] == {isa!r}, pyquant.build_info()\n"
        "_variant_check()\nprint('ok')\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(x, scale, zp, seed):
        return ops.fake_quant_lsq_qdrop(x, scale, zp, 0, 15, drop_p=0.5, seed=seed).relu().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.rand(8, 16, requires_grad=True)
    scale = torch.tensor([1 / 15], requires_grad=True)
    zp = torch.tensor([0.0], requires_grad=True)
    out = compiled(x, scale, zp, 5)
    grads = torch.autograd.grad(out, (x, scale))
    expected = step(x, scale, zp, 5)
    for a, b in zip(grads, torch.autograd.grad(expected, (x, scale))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
