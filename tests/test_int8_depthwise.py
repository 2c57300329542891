"""The direct NHWC depthwise kernel of int8_conv2d (groups == C_in == C_out; the VNNI path's 3x3 and 5x5 kernel,
csrc/ops/int8_gemm/cpu/int8_micro.cpp): bit-exact against the exact reference (pyquant.reference.int8) and the
scalar path for channel counts that are not a multiple of the 64-channel block, stride 1 and 2, padding 0 and 1,
batch 1 and 3, odd spatial sizes, both input layouts, float32 and uint8 output, with and without bias and ReLU;
border-only outputs, dilation and extreme values."""

import pytest
import torch

from conftest import int8_kernel_available, make_layout
from pyquant import ops
from pyquant.reference import int8 as ref

pytestmark = pytest.mark.usefixtures("one_thread")


# "auto" takes the direct kernel on CPUs with AVX-512 VNNI and the AVX2 row kernel on CPUs with AVX2 only; "vnni"
# and "avx2" force those (skipped where the CPU lacks them); "scalar" is the portable oracle.
KERNELS = ["auto"] + [pytest.param(k, marks=pytest.mark.skipif(not int8_kernel_available(k), reason=f"CPU lacks {k}"))
                      for k in ("vnni", "avx2")] + ["scalar"]


def _case(n, c, h, w, k=3, gen=None):
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen)
    wq = torch.randint(-128, 128, (c, 1, k, k), dtype=torch.int8, generator=gen)
    ws = torch.rand(c, generator=gen) * 0.01 + 1e-4
    b = torch.randn(c, generator=gen)
    return x, wq, ws, b


def assert_matches_reference(kernel, x, wq, ws, b, stride, padding, dilation=1, x_zp=77, hit_clamps=True):
    c = wq.shape[0]
    packed = ops.pack_int8_weight(wq, ws, groups=c)
    args = (stride, padding, dilation, c)
    # float32 output: with bias, without ReLU; without bias, with ReLU
    y = ops.int8_conv2d(x, 0.02, x_zp, packed, b, *args, _kernel=kernel)
    expected = ref.int8_conv2d(x, 0.02, x_zp, wq, ws, b, *args)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    yr = ops.int8_conv2d(x, 0.02, x_zp, packed, None, *args, relu=True, _kernel=kernel)
    torch.testing.assert_close(yr, ref.int8_conv2d(x, 0.02, x_zp, wq, ws, None, *args, relu=True), rtol=0, atol=0)
    # uint8 output on a range that makes both clamps (0 and 255) bite, and ReLU's clamp at the zero-point
    out_scale = float(expected.abs().max()) / 300 + 1e-6
    for bias in (b, None):
        for relu in (False, True):
            q = ops.int8_conv2d(x, 0.02, x_zp, packed, bias, *args, out_scale, 100, relu, _kernel=kernel)
            qe = ref.int8_conv2d(x, 0.02, x_zp, wq, ws, bias, *args, out_scale, 100, relu)
            assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(q, qe), (q.int() - qe.int()).abs().max()
            if hit_clamps and bias is not None:
                assert (q == 255).any() and ((q == 100).any() if relu else (q == 0).any())
    return y


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("c", [1, 3, 16, 17, 32, 64, 96, 144])  # 16, 32: adjacent pixels share a vector
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1])
def test_depthwise_matches_reference(kernel, c, stride, padding):
    g = torch.Generator().manual_seed(c * 10 + stride + padding)
    subcases = [(1, 7, 7, "channels_last", 0), (3, 15, 15, "contiguous", 255), (3, 7, 15, "channels_last", 131)]
    if c <= 32:
        subcases.append((1, 112, 112, "contiguous", 77))
    for n, h, w, layout, x_zp in subcases:
        x, wq, ws, b = _case(n, c, h, w, gen=g)
        assert_matches_reference(kernel, make_layout(x, layout), wq, ws, b, stride, padding, x_zp=x_zp, hit_clamps=c >= 17)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("c", [32, 70])
@pytest.mark.parametrize("h,w,padding", [(1, 1, 1), (2, 5, 1), (3, 3, 0), (1, 9, 2), (4, 2, 3)])
def test_depthwise_border_only(kernel, c, h, w, padding):
    # Outputs whose every pixel (or every row) reads padding: no interior columns, or none at all.
    g = torch.Generator().manual_seed(h * 100 + w)
    x, wq, ws, b = _case(2, c, h, w, gen=g)
    for stride in (1, 2):
        assert_matches_reference(kernel, x, wq, ws, b, stride, padding, x_zp=200, hit_clamps=False)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("k,stride,padding,dilation", [(5, 1, 2, 1), (5, 2, 4, 2), (3, (2, 1), (2, 1), (2, 1)),
                                                       (3, (1, 2), (0, 1), (1, 3)), (3, (2, 1), 1, (1, 2)),
                                                       (2, 1, 0, 1),   # an even tap count: no zero-row pair
                                                       (1, 1, 0, 1),   # one tap, paired with the zero row
                                                       (7, 1, 3, 1),   # 49 taps: the AVX2 kernel's largest
                                                       (9, 1, 4, 1)])  # 81 taps: AVX2 falls back to scalar
@pytest.mark.parametrize("c", [32, 80])
def test_depthwise_kernel_size_and_dilation(kernel, k, stride, padding, dilation, c):
    g = torch.Generator().manual_seed(k)
    x, wq, ws, b = _case(2, c, 13, 11, k=k, gen=g)
    assert_matches_reference(kernel, make_layout(x, "channels_last"), wq, ws, b, stride, padding, dilation)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("c", [16, 17, 144])
@pytest.mark.parametrize("xv,wv,x_zp", [(255, -128, 0), (255, 127, 0), (0, -128, 255), (0, 127, 255),
                                         (255, -128, 255)])
def test_depthwise_extreme_values(kernel, c, xv, wv, x_zp):
    # Accumulators at the int32 path's extremes (+-9 * 255 * 128), padding at the far zero-point.
    x = torch.full((1, c, 6, 5), xv, dtype=torch.uint8)
    wq = torch.full((c, 1, 3, 3), wv, dtype=torch.int8)
    wq[1::2] = 127 if wv == -128 else -128
    ws = torch.full((c,), 1e-3)
    packed = ops.pack_int8_weight(wq, ws, groups=c)
    for padding in (0, 1):
        y = ops.int8_conv2d(x, 1.0, x_zp, packed, None, 1, padding, 1, c, _kernel=kernel)
        torch.testing.assert_close(y, ref.int8_conv2d(x, 1.0, x_zp, wq, ws, None, 1, padding, 1, c), rtol=0, atol=0)
        for out_scale, out_zp in ((1e-3, 0), (1e3, 255), (0.7, 128)):
            q = ops.int8_conv2d(x, 1.0, x_zp, packed, None, 1, padding, 1, c, out_scale, out_zp, _kernel=kernel)
            assert torch.equal(q, ref.int8_conv2d(x, 1.0, x_zp, wq, ws, None, 1, padding, 1, c, out_scale, out_zp))


def test_depthwise_paths_agree():
    # The vector path and the portable scalar path give the same codes and floats on a MobileNetV2-like layer.
    g = torch.Generator().manual_seed(5)
    x, wq, ws, b = _case(2, 96, 28, 28, gen=g)
    packed = ops.pack_int8_weight(wq, ws, groups=96)
    for kw in ({}, {"out_scale": 0.05, "out_zero_point": 3, "relu": True}):
        a = ops.int8_conv2d(x, 0.02, 9, packed, b, 2, 1, 1, 96, **kw)
        s = ops.int8_conv2d(x, 0.02, 9, packed, b, 2, 1, 1, 96, **kw, _kernel="scalar")
        assert torch.equal(a, s)


def test_depthwise_bad_input():
    x = torch.randint(0, 256, (1, 8, 5, 5), dtype=torch.uint8)
    p = ops.pack_int8_weight(torch.randint(-128, 128, (8, 1, 3, 3), dtype=torch.int8), 0.1, groups=8)
    with pytest.raises(ValueError, match="groups"):
        ops.int8_conv2d(x, 0.1, 0, p, groups=4)
    with pytest.raises(ValueError, match="x_q must be"):
        ops.int8_conv2d(x[:, :4], 0.1, 0, p, groups=8)
    with pytest.raises(TypeError, match="x_q must be uint8"):
        ops.int8_conv2d(x.to(torch.int8), 0.1, 0, p, groups=8)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.int8_conv2d(x, 0.1, 0, p, torch.zeros(4), groups=8)
    with pytest.raises(ValueError, match="out_zero_point"):
        ops.int8_conv2d(x, 0.1, 0, p, None, 1, 1, 1, 8, 0.1, 256)
    with pytest.raises(ValueError, match="x_zero_point"):
        ops.int8_conv2d(x, 0.1, -1, p, groups=8)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("c", [32, 96])
def test_depthwise_outputs_beyond_int32(kernel, c):
    # y / out_scale far outside int32 (and +-inf): the uint8 epilogue keeps its float clamp and saturates.
    g = torch.Generator().manual_seed(c)
    x, wq, ws, _ = _case(1, c, 9, 9, gen=g)
    b = torch.randn(c, generator=g) * 1e30
    b[:4] = torch.tensor([float("inf"), -float("inf"), 3e9, -3e9])
    packed = ops.pack_int8_weight(wq, ws, groups=c)
    for out_scale in (1e-3, 1.0):
        for relu in (False, True):
            q = ops.int8_conv2d(x, 0.02, 5, packed, b, 1, 1, 1, c, out_scale, 17, relu, _kernel=kernel)
            assert torch.equal(q, ref.int8_conv2d(x, 0.02, 5, wq, ws, b, 1, 1, 1, c, out_scale, 17, relu))
