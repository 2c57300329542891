"""opcheck on every fake-quant op, torch.compile, hypothesis properties, and bad-input errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyquant import ops, reference


def _i32(*vals):
    return torch.tensor(vals, dtype=torch.int32)


def opcheck_cases():
    x = torch.randn(3, 4, 5)
    x_cl = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    s4 = torch.rand(4) * 0.1 + 0.01
    z4 = torch.randint(-3, 3, (4,), dtype=torch.int32)
    xg = torch.randn(3, 4, 5, requires_grad=True)
    yield torch.ops.pyquant.fake_quant.default, (x, torch.tensor([0.1]), _i32(0), -128, 127, None, False)
    yield torch.ops.pyquant.fake_quant.default, (xg, s4, z4, -8, 7, 1, True)
    yield torch.ops.pyquant.fake_quant.default, (x_cl, s4, z4.abs().float(), 0, 15, 1, True)
    yield torch.ops.pyquant.fake_quant.default, (x.transpose(0, 2), torch.tensor([0.1]), _i32(2), 0, 255, None, True)
    yield torch.ops.pyquant.fake_quant_out.default, (x, s4, z4, -8, 7, 1, torch.empty_like(x))
    _, mask = torch.ops.pyquant.fake_quant(x, s4, z4, -8, 7, 1, True)
    yield torch.ops.pyquant.fake_quant_mask_backward.default, (torch.randn(3, 4, 5), mask)
    sg = (torch.rand(4) * 0.1 + 0.01).requires_grad_(True)
    zg = torch.zeros(4, requires_grad=True)
    yield torch.ops.pyquant.fake_quant_lsq.default, (xg, sg, zg, -8, 7, 1, 0.5)
    yield torch.ops.pyquant.fake_quant_lsq.default, (xg, torch.tensor([0.05], requires_grad=True),
                                                     torch.tensor([1.0], requires_grad=True), 0, 15, None, 1.0)
    yield torch.ops.pyquant.fake_quant_lsq_backward.default, (torch.randn(3, 4, 5), x, s4, z4.float(), -8, 7, 1, 1.0)
    yield torch.ops.pyquant.fake_quant_lsq_qdrop.default, (xg, sg, zg, -8, 7, 1, 0.5, 0.5, 3)
    yield torch.ops.pyquant.fake_quant_lsq_qdrop.default, (x_cl.clone().requires_grad_(True),
                                                           torch.tensor([0.05], requires_grad=True),
                                                           torch.tensor([1.0], requires_grad=True), 0, 15, None, 1.0,
                                                           0.3, 2**40)
    yield torch.ops.pyquant.fake_quant_lsq_qdrop_backward.default, (torch.randn(3, 4, 5), x, s4, z4.float(), -8, 7, 1,
                                                                    1.0, 0.5, 3)
    ag = torch.tensor([1.5], requires_grad=True)
    yield torch.ops.pyquant.fake_quant_pact.default, (xg, ag, 4, None)
    yield torch.ops.pyquant.fake_quant_pact.default, (xg, (torch.rand(4) + 0.5).requires_grad_(True), 3, 1)
    yield torch.ops.pyquant.fake_quant_pact_backward.default, (torch.randn(3, 4, 5), x, torch.tensor([1.0]), 4, None)


@pytest.mark.parametrize("case", list(opcheck_cases()), ids=lambda c: str(c[0]) if hasattr(c, "__len__") else None)
def test_opcheck(case):
    op, args = case
    torch.library.opcheck(op, args)


def test_every_op_is_opchecked():
    checked = {op._schema.name.split("::")[1] for op, _ in opcheck_cases()}
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("pyquant::")}
    fake_quant_ops = {n for n in registered if n.startswith("fake_quant")}
    assert fake_quant_ops <= checked, fake_quant_ops - checked


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def qat_step(x, scale, zp, w_scale, w):
        xq = ops.fake_quant_lsq(x, scale, zp, 0, 255)
        wq = ops.fake_quant(w, w_scale, torch.zeros(w.shape[0], dtype=torch.int32), -127, 127, axis=0)
        return torch.nn.functional.linear(xq, wq).relu().sum()

    compiled = torch.compile(qat_step, fullgraph=True, backend="inductor")
    x = torch.rand(8, 16)
    w = torch.randn(4, 16, requires_grad=True)
    w_scale = w.detach().abs().amax(1) / 127
    scale = torch.tensor([1 / 255], requires_grad=True)
    zp = torch.tensor([0.0], requires_grad=True)
    out = compiled(x, scale, zp, w_scale, w)
    out.backward()
    eager_w = w.detach().clone().requires_grad_(True)
    eager_s = scale.detach().clone().requires_grad_(True)
    eager_z = zp.detach().clone().requires_grad_(True)
    expected = qat_step(x, eager_s, eager_z, w_scale, eager_w)
    expected.backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w.grad, eager_w.grad)
    torch.testing.assert_close(scale.grad, eager_s.grad)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    data=st.data(),
    bits=st.sampled_from([2, 3, 4, 5, 6, 7, 8, 12, 16]),
    signed=st.booleans(),
    float_zp=st.booleans(),
    log_scale=st.floats(-6, 2),
    spread=st.floats(0.1, 100.0),
)
def test_property_matches_reference_and_aten(shape, data, bits, signed, float_zp, log_scale, spread):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    channels = 1 if axis is None else shape[axis]
    scale = (10**log_scale) * (torch.rand(channels) + 0.5)
    if float_zp:
        zp = torch.rand(channels) * (qmax - qmin) + qmin
    else:
        zp = torch.randint(qmin, qmax + 1, (channels,), dtype=torch.int32)
    x = torch.randn(shape) * spread * float(scale.mean()) * (qmax - qmin) / 4
    y = ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis)
    torch.testing.assert_close(y, reference.fake_quant(x, scale, zp, qmin, qmax, axis), rtol=0, atol=0)
    if axis is None and not float_zp:
        expected = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
    elif axis is not None:
        expected = torch.fake_quantize_per_channel_affine(x, scale, zp, axis % len(shape), qmin, qmax)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # Every output lies on the grid: (y / s + z) is an integer in [qmin, qmax].
    shape_c = [1] * len(shape)
    if axis is not None:
        shape_c[axis] = -1
    levels = (y.double() / scale.double().reshape(shape_c) + zp.double().reshape(shape_c))
    tol = 1e-6 * (qmax - qmin + 1)  # float32 rounding of y, relative to the level magnitude
    assert (levels >= qmin - tol).all() and (levels <= qmax + tol).all()
    if not float_zp:
        assert ((levels - levels.round()).abs() <= tol).all()


# ------------------------------------------------------------------------------------------------
# Bad input: a clear ValueError / TypeError naming the argument.

X = torch.randn(4, 3)
S = torch.tensor([0.1])
Z = torch.tensor([0], dtype=torch.int32)


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(x=X.double()), TypeError, "x"),
        (dict(x=X.int()), TypeError, "x"),
        (dict(x=[1.0, 2.0]), TypeError, "x"),
        (dict(scale=torch.tensor([0.0])), ValueError, "scale"),
        (dict(scale=torch.tensor([-0.1])), ValueError, "scale"),
        (dict(scale=torch.tensor([float("nan")])), ValueError, "scale"),
        (dict(scale=torch.tensor([float("inf")])), ValueError, "scale"),
        (dict(scale=torch.tensor([1], dtype=torch.int32)), TypeError, "scale"),
        (dict(zero_point=torch.tensor([300], dtype=torch.int32)), ValueError, "zero_point"),
        (dict(zero_point=torch.tensor([-129.0])), ValueError, "zero_point"),
        (dict(zero_point=torch.tensor([True])), TypeError, "zero_point"),
        (dict(qmin=10, qmax=10), ValueError, "quant_min"),
        (dict(qmin=20, qmax=10), ValueError, "quant_min"),
        (dict(qmin=0, qmax=2**20), ValueError, "quant_max"),
        (dict(qmin=1.5), TypeError, "qmin"),
        (dict(axis=2), ValueError, "axis"),
        (dict(axis=-3), ValueError, "axis"),
        (dict(axis=1, scale=torch.rand(2) + 0.1, zero_point=torch.zeros(2, dtype=torch.int32)), ValueError, "scale"),
        (dict(axis=1, scale=torch.rand(3) + 0.1, zero_point=torch.zeros(2, dtype=torch.int32)), ValueError, "zero_point"),
        (dict(scale=torch.rand(3) + 0.1), ValueError, "scale"),
        (dict(scale=torch.rand(1, 1) + 0.1), ValueError, "scale"),
        (dict(axis=1.0), TypeError, "axis"),
    ],
)
def test_bad_input_raises_naming_argument(kwargs, exc, name):
    args = dict(x=X, scale=S, zero_point=Z, qmin=-128, qmax=127, axis=None)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        ops.fake_quant(args["x"], args["scale"], args["zero_point"], args["qmin"], args["qmax"], axis=args["axis"])


def test_bad_input_per_channel_value_names_channel():
    with pytest.raises(ValueError, match="channel 1"):
        ops.fake_quant(X, torch.tensor([0.1, -1.0, 0.1]), torch.zeros(3, dtype=torch.int32), -8, 7, axis=1)


def test_bad_input_learnable_ops():
    with pytest.raises(ValueError, match="bits"):
        ops.fake_quant_pact(X, 1.0, 0)
    with pytest.raises(ValueError, match="bits"):
        ops.fake_quant_pact(X, 1.0, 17)
    with pytest.raises(ValueError, match="alpha"):
        ops.fake_quant_pact(X, 0.0, 4)
    with pytest.raises(ValueError, match="alpha"):
        ops.fake_quant_pact(X, torch.tensor([1.0, 2.0]), 4)
    with pytest.raises(ValueError, match="grad_factor"):
        ops.fake_quant_lsq(X, S, 0.0, -8, 7, grad_factor=float("nan"))
    with pytest.raises(ValueError, match="zero_point"):
        ops.fake_quant_lsq(X, S, torch.tensor([float("inf")]), -8, 7)
    with pytest.raises(ValueError, match="grad"):
        torch.ops.pyquant.fake_quant_lsq_backward(torch.randn(5), X, S, Z.float(), -8, 7, None, 1.0)
    with pytest.raises(ValueError, match="mask"):
        torch.ops.pyquant.fake_quant_mask_backward(torch.randn(100), torch.zeros(3, dtype=torch.uint8))


def test_backward_without_mask_is_a_clear_error():
    x = torch.randn(10, requires_grad=True)
    y, _ = torch.ops.pyquant.fake_quant(x, S, Z, -8, 7, None, False)
    with pytest.raises(RuntimeError, match="compute_mask"):
        y.sum().backward()
