"""int8_linear / int8_conv2d / pack_int8_weight: bit-exact against the int64 / exact-float64 reference
(pyquant.reference.int8) and against the scalar path, on every CPU path this machine has; extreme
zero-points and saturating values; requantized output and ReLU; conv options; opcheck; bad input."""

import pytest
import torch

from conftest import int8_kernel_available, make_layout
from pyquant import ops
from pyquant.reference import int8 as ref

ALL_KERNELS = ["auto", "amx", "vnni", "avx2", "scalar"]


KERNELS = [pytest.param(k, marks=pytest.mark.skipif(not int8_kernel_available(k), reason=f"CPU lacks {k}"))
           for k in ALL_KERNELS]


def _rand_case(m, n, k, x_zp=None, gen=None):
    x = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=gen)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    ws = torch.rand(n, generator=gen) * 0.01 + 1e-4
    b = torch.randn(n, generator=gen)
    return x, w, ws, b


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 10, 3), (7, 65, 13), (6, 64, 64), (13, 129, 130), (50, 200, 259),
                                   (97, 31, 1027), (200, 70, 5),
                                   (200, 70, 256),  # K % 64 == 0: AMX tiles read x in place
                                   (100, 16, 40), (61, 32, 70), (25, 17, 9)])  # narrow VNNI panels
@pytest.mark.parametrize("x_zp", [0, 255, 131])
def test_linear_matches_reference(kernel, m, n, k, x_zp):
    x, w, ws, b = _rand_case(m, n, k)
    packed = ops.pack_int8_weight(w, ws)
    y = ops.int8_linear(x, 0.037, x_zp, packed, b, _kernel=kernel)
    torch.testing.assert_close(y, ref.int8_linear(x, 0.037, x_zp, w, ws, b), rtol=0, atol=0)
    # Requantized, with ReLU; the output range is chosen so both clamps are hit.
    out_scale = float(y.abs().max()) / 300 + 1e-6
    for relu in (False, True):
        q = ops.int8_linear(x, 0.037, x_zp, packed, b, out_scale, 128, relu, _kernel=kernel)
        assert q.dtype == torch.uint8
        assert torch.equal(q, ref.int8_linear(x, 0.037, x_zp, w, ws, b, out_scale, 128, relu))
    if m * n > 100:
        assert (q == 255).any() and (q == 128).any()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemm_blocks_and_threads(kernel, threads):
    # Rows split into tasks of up to 16 strips of 6 rows; the AVX2 path computes a task's rows in tiles of 4
    # (the last one reading rows past the task) and widens each panel once per task. 16 * 6 * 3 + 7 rows,
    # 8-column blocks plus a tail, K with a tail, linear (rows read in place) and conv (rows gathered).
    gen = torch.Generator().manual_seed(3)
    x, w, ws, b = _rand_case(16 * 6 * 3 + 7, 75, 150, gen=gen)
    packed = ops.pack_int8_weight(w, ws)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y = ops.int8_linear(x, 0.05, 7, packed, b, 0.7, 3, True, _kernel=kernel)
        xc = torch.randint(0, 256, (3, 24, 13, 11), dtype=torch.uint8, generator=gen)
        wc = torch.randint(-128, 128, (40, 24, 3, 3), dtype=torch.int8, generator=gen)
        yc = ops.int8_conv2d(xc, 0.05, 9, ops.pack_int8_weight(wc, ws[:40]), b[:40], 1, 1, _kernel=kernel)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y, ref.int8_linear(x, 0.05, 7, w, ws, b, 0.7, 3, True))
    torch.testing.assert_close(yc, ref.int8_conv2d(xc, 0.05, 9, wc, ws[:40], b[:40], 1, 1), rtol=0, atol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_linear_equals_scalar_path_no_bias(kernel):
    x, w, ws, _ = _rand_case(45, 190, 300)
    packed = ops.pack_int8_weight(w, ws)
    a = ops.int8_linear(x, 0.5, 7, packed, relu=True, _kernel=kernel)
    s = ops.int8_linear(x, 0.5, 7, packed, relu=True, _kernel="scalar")
    assert torch.equal(a, s)
    assert (a >= 0).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("xv,wv,x_zp", [(255, -128, 0), (255, 127, 0), (0, -128, 255), (255, -128, 255),
                                         (0, 127, 255)])
def test_linear_saturating_values(kernel, xv, wv, x_zp):
    # u8 x s8 pair sums of 255 * (-128) * 2 overflow int16 (vpmaddubsw would saturate); K = 4096 gives
    # accumulators near +-1.3e8, far outside float32's exact range: checks the int32 path end to end.
    k = 4096
    x = torch.full((7, k), xv, dtype=torch.uint8)
    w = torch.full((67, k), wv, dtype=torch.int8)
    w[1::2, ::3] = -w[1::2, ::3] if wv != -128 else 127
    ws = torch.full((67,), 1e-6)
    packed = ops.pack_int8_weight(w, ws)
    y = ops.int8_linear(x, 1.0, x_zp, packed, _kernel=kernel)
    torch.testing.assert_close(y, ref.int8_linear(x, 1.0, x_zp, w, ws), rtol=0, atol=0)


def test_linear_max_reduction_length():
    k = 65536
    x = torch.full((1, k), 255, dtype=torch.uint8)
    w = torch.full((3, k), -128, dtype=torch.int8)
    packed = ops.pack_int8_weight(w, 1.0)
    y = ops.int8_linear(x, 1.0, 0, packed)
    assert y[0, 0].item() == float(torch.tensor(255 * -128 * k, dtype=torch.int32).float())
    with pytest.raises(ValueError, match="65536"):
        ops.pack_int8_weight(torch.zeros(1, k + 1, dtype=torch.int8), 1.0)


def test_linear_leading_dims_and_noncontiguous_x():
    x, w, ws, b = _rand_case(24, 33, 40)
    packed = ops.pack_int8_weight(w, ws)
    y = ops.int8_linear(x.reshape(2, 3, 4, 40), 0.1, 9, packed, b)
    assert y.shape == (2, 3, 4, 33)
    assert torch.equal(y.reshape(24, 33), ops.int8_linear(x, 0.1, 9, packed, b))
    xn = make_layout(x, "noncontiguous")
    assert not xn.is_contiguous()
    assert torch.equal(ops.int8_linear(xn, 0.1, 9, packed, b), ops.int8_linear(x, 0.1, 9, packed, b))


def test_pack_col_sum_and_scalar_scale():
    w = torch.randint(-128, 128, (5, 9), dtype=torch.int8)
    p = ops.pack_int8_weight(w, 0.25)
    assert torch.equal(p.col_sum, w.to(torch.int32).sum(1))
    assert torch.equal(p.scale, torch.full((5,), 0.25))
    assert p.shape == (5, 9) and p.groups == 1


CONV_CASES = [
    # (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups)
    (2, 8, 9, 11, 16, 3, 3, 1, 1, 1, 1),
    (1, 3, 10, 7, 5, 3, 3, 2, 0, 1, 1),
    (2, 16, 8, 8, 70, 1, 1, 1, 0, 1, 1),   # pointwise fast path
    (1, 16, 9, 9, 8, 1, 1, 2, 0, 1, 1),    # strided 1x1
    (1, 64, 8, 9, 20, 1, 1, 1, 0, 1, 1),   # 1x1, C = 64: AMX tiles read the NHWC input in place
    (2, 8, 9, 11, 6, 3, 3, (2, 1), (1, 2), (1, 2), 2),
    (2, 12, 7, 6, 12, 3, 3, 1, 1, 1, 12),  # depthwise
    (1, 70, 10, 9, 70, 3, 3, 2, 1, 1, 70),  # depthwise, channel tail, stride 2
    (1, 5, 12, 12, 5, 5, 3, 1, (2, 1), 2, 5),  # depthwise, dilated
    (1, 4, 6, 6, 8, 3, 3, 1, 1, 1, 4),     # channel multiplier 2: grouped GEMM
    (1, 6, 5, 5, 4, 5, 5, 1, 0, 1, 1),     # kernel = image
    (2, 16, 12, 13, 16, 3, 3, 1, 1, 1, 1),  # 16 output channels: narrow VNNI panel, 4-strip groups + tail
    (3, 16, 11, 9, 32, 3, 3, 2, 1, 1, 1),   # 32 output channels, stride 2: narrow panel, 2-strip groups
    (1, 32, 7, 7, 24, 1, 1, 1, 0, 1, 1),    # pointwise, 24 channels: masked second vector
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv_matches_reference(kernel, case, layout):
    n, c, h, wd, co, kh, kw, stride, padding, dilation, groups = case
    x = make_layout(torch.randint(0, 256, (n, c, h, wd), dtype=torch.uint8), layout)
    w = torch.randint(-128, 128, (co, c // groups, kh, kw), dtype=torch.int8)
    ws = torch.rand(co) * 0.01 + 1e-4
    b = torch.randn(co)
    packed = ops.pack_int8_weight(w, ws, groups=groups)
    for x_zp in (0, 255, 77):
        y = ops.int8_conv2d(x, 0.02, x_zp, packed, b, stride, padding, dilation, groups, _kernel=kernel)
        expected = ref.int8_conv2d(x, 0.02, x_zp, w, ws, b, stride, padding, dilation, groups)
        assert y.shape == expected.shape
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
    out_scale = float(y.abs().max()) / 100 + 1e-3
    q = ops.int8_conv2d(x, 0.02, 77, packed, b, stride, padding, dilation, groups, out_scale, 100, True,
                        _kernel=kernel)
    assert torch.equal(q, ref.int8_conv2d(x, 0.02, 77, w, ws, b, stride, padding, dilation, groups, out_scale, 100,
                                          True))
    assert q.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kernel", KERNELS)
def test_conv_saturating_values(kernel):
    x = torch.full((1, 64, 6, 6), 255, dtype=torch.uint8)
    for groups, w_val in ((1, -128), (64, -128), (1, 127)):
        w = torch.full((64, 64 // groups, 3, 3), w_val, dtype=torch.int8)
        packed = ops.pack_int8_weight(w, 1.0, groups=groups)
        for x_zp in (0, 255):
            y = ops.int8_conv2d(x, 1.0, x_zp, packed, padding=1, groups=groups, _kernel=kernel)
            expected = ref.int8_conv2d(x, 1.0, x_zp, w, torch.ones(64), padding=1, groups=groups)
            torch.testing.assert_close(y, expected, rtol=0, atol=0)


def _opcheck_linear_args():
    x, w, ws, b = _rand_case(9, 70, 21)
    p = ops.pack_int8_weight(w, ws)
    return x, p, b


def test_opcheck():
    w = torch.randint(-128, 128, (70, 21), dtype=torch.int8)
    torch.library.opcheck(torch.ops.pyquant.pack_int8_weight.default, (w, 1))
    wc = torch.randint(-128, 128, (8, 2, 3, 3), dtype=torch.int8)
    torch.library.opcheck(torch.ops.pyquant.pack_int8_weight.default, (wc, 2))
    x, p, b = _opcheck_linear_args()
    op = torch.ops.pyquant.int8_linear.default
    torch.library.opcheck(op, (x, 0.1, 3, p.data, p.col_sum, p.scale, b))
    torch.library.opcheck(op, (x, 0.1, 3, p.data, p.col_sum, p.scale, None, 0.5, 10, True))
    xc = torch.randint(0, 256, (2, 4, 7, 6), dtype=torch.uint8)
    pc = ops.pack_int8_weight(wc, torch.rand(8) + 0.1, groups=2)
    op = torch.ops.pyquant.int8_conv2d.default
    torch.library.opcheck(op, (xc, 0.1, 3, pc.data, pc.col_sum, pc.scale, [3, 3], None, [2, 1], [1, 0], [1, 1], 2))
    torch.library.opcheck(op, (xc, 0.1, 3, pc.data, pc.col_sum, pc.scale, [3, 3], torch.randn(8), [1, 1], [1, 1],
                               [1, 1], 2, 0.3, 5, True))
    wd = torch.randint(-128, 128, (4, 1, 3, 3), dtype=torch.int8)
    pd = ops.pack_int8_weight(wd, 0.1, groups=4)
    torch.library.opcheck(op, (xc, 0.1, 3, pd.data, pd.col_sum, pd.scale, [3, 3], None, [1, 1], [1, 1], [1, 1], 4))


def test_bad_input():
    x, p, b = _opcheck_linear_args()
    with pytest.raises(TypeError, match="x_q must be uint8"):
        ops.int8_linear(x.to(torch.int8), 0.1, 0, p)
    with pytest.raises(TypeError, match="x_q must be uint8"):
        torch.ops.pyquant.int8_linear(x.float(), 0.1, 0, p.data, p.col_sum, p.scale)
    with pytest.raises(ValueError, match="K=22"):
        ops.int8_linear(torch.zeros(3, 22, dtype=torch.uint8), 0.1, 0, p)
    with pytest.raises(ValueError, match="K=24"):  # same padded size, still caught by the header
        torch.ops.pyquant.int8_linear(torch.zeros(3, 24, dtype=torch.uint8), 0.1, 0, p.data, p.col_sum, p.scale)
    raw = torch.randint(-128, 128, (70, 21), dtype=torch.int8)
    with pytest.raises(TypeError, match="PackedInt8Weight"):
        ops.int8_linear(x, 0.1, 0, raw)
    with pytest.raises(ValueError, match="not a packed weight"):
        torch.ops.pyquant.int8_linear(x, 0.1, 0, torch.zeros(4096, dtype=torch.int8), p.col_sum, p.scale)
    with pytest.raises(ValueError, match="1-d packed weight"):
        torch.ops.pyquant.int8_linear(x, 0.1, 0, raw, p.col_sum, p.scale)
    with pytest.raises(ValueError, match="contiguous"):
        nc = torch.zeros(2 * p.data.numel(), dtype=torch.int8)[::2]
        nc.copy_(p.data)
        torch.ops.pyquant.int8_linear(x, 0.1, 0, nc, p.col_sum, p.scale)
    with pytest.raises(ValueError, match="x_zero_point"):
        ops.int8_linear(x, 0.1, 256, p)
    with pytest.raises(ValueError, match="x_scale"):
        ops.int8_linear(x, float("nan"), 0, p)
    with pytest.raises(ValueError, match="out_scale and out_zero_point"):
        ops.int8_linear(x, 0.1, 0, p, out_scale=0.1)
    with pytest.raises(ValueError, match="out_zero_point"):
        ops.int8_linear(x, 0.1, 0, p, out_scale=0.1, out_zero_point=-1)
    with pytest.raises(ValueError, match="bias"):
        ops.int8_linear(x, 0.1, 0, p, torch.zeros(3))
    with pytest.raises(TypeError, match="bias"):
        ops.int8_linear(x, 0.1, 0, p, torch.zeros(70, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernel"):
        ops.int8_linear(x, 0.1, 0, p, _kernel="amx512")
    with pytest.raises(TypeError, match="w_q must be int8"):
        ops.pack_int8_weight(raw.float(), 1.0)
    with pytest.raises(ValueError, match="w_scale"):
        ops.pack_int8_weight(raw, torch.zeros(70))
    with pytest.raises(ValueError, match="w_scale"):
        ops.pack_int8_weight(raw, torch.ones(3))
    # conv
    wc = torch.randint(-128, 128, (8, 2, 3, 3), dtype=torch.int8)
    pc = ops.pack_int8_weight(wc, 1.0, groups=2)
    xc = torch.zeros(1, 4, 5, 5, dtype=torch.uint8)
    with pytest.raises(ValueError, match="groups"):
        ops.int8_conv2d(xc, 0.1, 0, pc, groups=1)
    with pytest.raises(ValueError, match="x_q must be"):
        ops.int8_conv2d(torch.zeros(1, 6, 5, 5, dtype=torch.uint8), 0.1, 0, pc, groups=2)
    with pytest.raises(ValueError, match="packed for"):
        torch.ops.pyquant.int8_conv2d(xc, 0.1, 0, pc.data, pc.col_sum, pc.scale, [1, 1], None, [1, 1], [0, 0], [1, 1],
                                      2)
    with pytest.raises(ValueError, match="smaller than"):
        ops.int8_conv2d(torch.zeros(1, 4, 2, 2, dtype=torch.uint8), 0.1, 0, pc, groups=2)
    with pytest.raises(ValueError, match="linear weight"):
        ops.int8_conv2d(xc, 0.1, 0, p, groups=1)
    with pytest.raises(ValueError, match="conv weight"):
        ops.int8_linear(x, 0.1, 0, pc)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[6], CONV_CASES[11], CONV_CASES[12]])
@pytest.mark.parametrize("requantize", [False, True])
def test_conv_fused_residual_matches_reference(kernel, case, requantize):
    """conv -> add -> ReLU in the epilogue: bit-exact against the reference, on the dense, narrow, pointwise
    and depthwise paths, with the residual in either layout."""
    n, c, h, wd, co, kh, kw, stride, padding, dilation, groups = case
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, c, h, wd), dtype=torch.uint8, generator=g)
    w = torch.randint(-128, 128, (co, c // groups, kh, kw), dtype=torch.int8, generator=g)
    ws = torch.rand(co, generator=g) * 0.01 + 1e-4
    b = torch.randn(co, generator=g)
    packed = ops.pack_int8_weight(w, ws, groups=groups)
    shape = ops.int8_conv2d(x, 0.02, 7, packed, b, stride, padding, dilation, groups).shape
    r = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    out = (0.05, 40) if requantize else (None, None)
    for layout in ("contiguous", "channels_last"):
        y = ops.int8_conv2d(x, 0.02, 7, packed, b, stride, padding, dilation, groups, *out, True,
                            residual=make_layout(r, layout), residual_scale=0.3, residual_zero_point=100,
                            _kernel=kernel)
        expected = ref.int8_conv2d(x, 0.02, 7, w, ws, b, stride, padding, dilation, groups, *out, True,
                                   residual=r, residual_scale=0.3, residual_zero_point=100)
        assert torch.equal(y, expected)


def test_conv_residual_bad_input():
    x = torch.randint(0, 256, (1, 4, 5, 5), dtype=torch.uint8)
    p = ops.pack_int8_weight(torch.randint(-128, 128, (8, 4, 3, 3), dtype=torch.int8), torch.rand(8) + 0.1)
    r = torch.zeros(1, 8, 3, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="residual_scale"):
        ops.int8_conv2d(x, 0.1, 0, p, residual=r)
    with pytest.raises(ValueError, match="residual must have the output's shape"):
        ops.int8_conv2d(x, 0.1, 0, p, residual=r[:, :4], residual_scale=0.1, residual_zero_point=0)
    with pytest.raises(TypeError, match="residual must be uint8"):
        ops.int8_conv2d(x, 0.1, 0, p, residual=r.float(), residual_scale=0.1, residual_zero_point=0)
    with pytest.raises(ValueError, match="residual_zero_point"):
        ops.int8_conv2d(x, 0.1, 0, p, residual=r, residual_scale=0.1, residual_zero_point=300)
    torch.library.opcheck(torch.ops.pyquant.int8_conv2d.default,
                          (x, 0.1, 3, p.data, p.col_sum, p.scale, [3, 3], None, [1, 1], [0, 0], [1, 1], 1, 0.2, 5,
                           True, "auto", r, 0.25, 9))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("requantize", [False, True])
def test_non_finite_and_huge_bias_match_scalar(kernel, relu, requantize):
    """+-inf, NaN, 1e30 and -0.0 biases: the vector epilogues (AVX2 8 lanes, VNNI 16 lanes) give the scalar
    oracle's outputs, in full vectors and in the remainder columns (29 columns)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (37, 50), dtype=torch.uint8, generator=g)
    w = torch.randint(-128, 128, (29, 50), dtype=torch.int8, generator=g)
    b = torch.randn(29, generator=g) * 5
    b[0], b[1], b[2], b[3], b[4] = float("inf"), -float("inf"), float("nan"), 1e30, -0.0
    b[9], b[17], b[26] = float("nan"), float("inf"), -float("inf")
    packed = ops.pack_int8_weight(w, torch.rand(29, generator=g) * 0.01 + 1e-4)
    out = (0.05, 3) if requantize else (None, None)
    y = ops.int8_linear(x, 0.037, 17, packed, b, *out, relu, _kernel=kernel)
    expected = ops.int8_linear(x, 0.037, 17, packed, b, *out, relu, _kernel="scalar")
    if requantize:
        assert torch.equal(y, expected)
    else:
        assert torch.equal(y.isnan(), expected.isnan())
        assert torch.equal(y.nan_to_num(7.0), expected.nan_to_num(7.0))
        assert torch.equal(y.signbit() & ~y.isnan(), expected.signbit() & ~expected.isnan())  # -0.0 kept
