"""Cases modelled on the peers' suites, rewritten against our API: PyTorch's
test/quantization/core/test_workflow_module.py (observer reference tables, HistogramObserver
robustness cases) and test_workflow_ops.py (fake-quant numerics), NVIDIA pytorch-quantization's
tests/calibrator_test.py (max / percentile / MSE / entropy calibrators). Where we deliberately differ
from PyTorch (docs/robustness.md, "Where we differ"), the test pins our behaviour and the difference."""

import pytest
import torch

from pyquant import calib, ops

FLT_MAX = torch.finfo(torch.float32).max


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# PyTorch observers: reference tables


def test_minmax_per_tensor_reference_table():
    x = torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = torch.tensor([4.0, 5.0, 5.0, 6.0, 7.0, 8.0])
    est = calib.MinMaxEstimator().observe(x).observe(y)
    assert float(est.min_val) == 1.0 and float(est.max_val) == 8.0
    # PyTorch's per_tensor_affine table: scale 0.0313725, zero-point -128 (qint8) / 0 (quint8)
    for (qmin, qmax), zp_ref in (((-128, 127), -128), ((0, 255), 0)):
        scale, zp = est.qparams(qmin, qmax)
        assert abs(float(scale) - 0.0313725) < 1e-6 and int(zp) == zp_ref
    # moving average, c = 0.5: the table's second pair of batches has the same extremes
    ema = calib.MinMaxEstimator(averaging_constant=0.5)
    ema.observe(torch.tensor([0.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0])).observe(torch.tensor([2.0, 5.0, 5.0, 6.0, 7.0, 10.0]))
    assert float(ema.min_val) == 1.0 and float(ema.max_val) == 8.0


def test_minmax_symmetric_differs_from_pytorch_by_design():
    # PyTorch: scale = max|x| / ((qmax - qmin) / 2) = 8 / 127.5 = 0.062745 (its table), so +max|x| is
    # not on the grid (127 * 0.062745 = 7.97). Ours: max|x| / qmax, so +max|x| is level 127 exactly.
    est = calib.MinMaxEstimator(symmetric=True).observe(torch.tensor([1.0, 8.0, -3.0]))
    scale, zp = est.qparams(-128, 127)
    assert float(scale) == float(torch.tensor(8.0) / 127) and int(zp) == 0
    assert abs(float(scale) - 0.062745) > 1e-4
    y = ops.fake_quant(torch.tensor([8.0]), scale, zp, -128, 127)
    assert float(y) == float(scale * 127)


X_PER_CHANNEL = torch.tensor([
    [[[1.0, 2.0], [2.0, 2.5]], [[3.0, 4.0], [4.5, 6.0]]],
    [[[-4.0, -3.0], [5.0, 5.0]], [[6.0, 3.0], [7.0, 8.0]]],
])
REF_MIN = [[1.0, -4.0], [-4.0, 3.0], [-4.0, 2.0], [-4.0, -3.0]]
REF_MAX = [[6.0, 8.0], [5.0, 8.0], [6.0, 8.0], [7.0, 8.0]]
REF_AFFINE_SCALE = [[0.02352941, 0.04705882], [0.03529412, 0.03137255], [0.03921569, 0.03137255],
                    [0.04313726, 0.04313726]]
REF_QINT8_ZP = [[-128, -43], [-15, -128], [-26, -128], [-35, -58]]
REF_QUINT8_ZP = [[0, 85], [113, 0], [102, 0], [93, 70]]


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
@pytest.mark.parametrize("moving_average", [False, True])
def test_minmax_per_channel_reference_table(axis, moving_average):
    if moving_average:
        est = calib.MinMaxEstimator(axis=axis, averaging_constant=0.5)
        est.observe(0.5 * X_PER_CHANNEL).observe(1.5 * X_PER_CHANNEL)
    else:
        est = calib.MinMaxEstimator(axis=axis).observe(X_PER_CHANNEL)
    assert est.min_val.tolist() == REF_MIN[axis] and est.max_val.tolist() == REF_MAX[axis]
    for (qmin, qmax), zps in (((-128, 127), REF_QINT8_ZP), ((0, 255), REF_QUINT8_ZP)):
        scale, zp = est.qparams(qmin, qmax)
        torch.testing.assert_close(scale, torch.tensor(REF_AFFINE_SCALE[axis]), rtol=1e-5, atol=1e-4)
        assert zp.tolist() == zps[axis]
    sym_scale, _ = calib.MinMaxEstimator(axis=axis, symmetric=True).observe(X_PER_CHANNEL).qparams(-128, 127)
    absmax = torch.maximum(-torch.tensor(REF_MIN[axis]), torch.tensor(REF_MAX[axis]))
    assert torch.equal(sym_scale, absmax / 127)  # PyTorch: absmax / 127.5 (see the test above)


# ------------------------------------------------------------------------------------------------
# PyTorch HistogramObserver robustness cases, on our histogram estimators


def _histogram_estimators():
    return [calib.PercentileEstimator(percentile=100.0), calib.HistogramLpEstimator(), calib.EntropyEstimator()]


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_close_to_infinity_mask_survives_quantization(sign):
    # An attention mask of -3.4e30 (or +): quantized with the calibrated grid, softmax(input + mask)
    # is unchanged, so the zeros stay exactly 0 and the mask stays huge.
    # The histogram estimators clip an unsigned grid at 0 (our post-ReLU convention, docs/robustness.md), so
    # signed data take a signed asymmetric grid there; min-max keeps PyTorch's quint8 behaviour.
    mask = torch.tensor([-3.4028234663852886e30, 0.0, 0.0, 0.0]) * sign
    for est, (qmin, qmax) in [(calib.MinMaxEstimator(), (0, 255)),
                              (calib.PercentileEstimator(percentile=100.0, symmetric=False), (-128, 127))]:
        est.observe(mask).observe(mask - sign)
        scale, zp = est.qparams(qmin, qmax)
        dq = ops.fake_quant(mask, scale, zp, qmin, qmax)
        assert torch.equal(dq[1:], torch.zeros(3)) and torch.isfinite(dq).all()
        inp = torch.randn(1, 4)
        torch.testing.assert_close(torch.softmax(inp + dq, 1), torch.softmax(inp + mask, 1))


def test_extreme_inputs_flt_max_batches():
    # PyTorch's extreme-inputs case: batches reaching -FLT_MAX / FLT_MAX must neither crash nor
    # poison the histogram; every value is counted.
    batches = [torch.tensor([-FLT_MAX, 0.0, 1.0]), torch.tensor([0.5, FLT_MAX]), torch.randn(100)]
    for est in _histogram_estimators():
        for b in batches:
            est.observe(b)
        assert int(est.collector.counts.sum()) == sum(b.numel() for b in batches)
        scale, zp = est.qparams(-128, 127)
        assert torch.isfinite(scale).all() and bool((scale > 0).all())
        assert torch.isfinite(ops.fake_quant(torch.cat(batches), scale, zp, -128, 127)).all()


def test_close_min_max_then_wide_batch_does_not_blow_up():
    # PyTorch: [0, 1e-9] then [2, 3] once ran out of memory upsampling; ours regrids in place.
    for est in _histogram_estimators():
        est.observe(torch.tensor([0.0, 1e-9])).observe(torch.tensor([2.0, 3.0]))
        c = est.collector
        assert c.counts.shape == (1, 2 * c.bins) and int(c.counts.sum()) == 4
        assert 3.0 <= float(c.amax) < 6.0
    clip = calib.PercentileEstimator(percentile=100.0).observe(torch.tensor([0.0, 1e-9])).observe(
        torch.tensor([2.0, 3.0])).clip_range(-128)[1]
    assert abs(float(clip) - 3.0) <= 2 * 6.0 / 2048


def test_infinite_batch_is_rejected_and_leaves_the_state_alone():
    # PyTorch's HistogramObserver skips a batch of inf silently; we raise ValueError (a calibration
    # batch of inf is a bug upstream), and the estimator's state is what it was.
    x = torch.randn(4, 4, 4, 4)
    for make in (lambda: calib.PercentileEstimator(), calib.MinMaxEstimator, calib.EntropyEstimator):
        est, clean = make().observe(x), make().observe(x)
        with pytest.raises(ValueError, match="finite"):
            est.observe(x * torch.inf)
        est.observe(x)
        clean.observe(x)
        assert all(torch.equal(a, b) for a, b in zip(est.qparams(-128, 127), clean.qparams(-128, 127)))


def test_histogram_counts_equal_the_values_seen():
    # PyTorch's correct-numel case: the histogram sums to every element observed, across range growth.
    est = calib.PercentileEstimator(bins=256)
    total = 0
    for k in range(6):
        b = torch.randn(1000) * (10.0 ** k)
        est.observe(b)
        total += b.numel()
        assert int(est.collector.counts.sum()) == total


def test_same_inputs_sequence():
    # PyTorch's same-inputs case: ones, zeros, zeros, [2..5], [5..8].
    est = calib.PercentileEstimator(percentile=100.0)
    for b in ([1.0] * 4, [0.0] * 4, [0.0] * 4, [2.0, 3.0, 4.0, 5.0], [5.0, 6.0, 7.0, 8.0]):
        est.observe(torch.tensor(b))
    c = est.collector
    assert float(c.min_val) == 0.0 and float(c.max_val) == 8.0 and int(c.counts.sum()) == 20
    assert abs(float(est.clip_range(-128)[1]) - 8.0) <= 2 * float(c.width)


def test_one_sided_input_has_zero_point_zero():
    est = calib.PercentileEstimator(percentile=100.0)
    est.observe(torch.tensor([0.0, 0.3, 1.2, 1.7])).observe(torch.tensor([0.1, 1.3, 2.0, 2.7]))
    scale, zp = est.qparams(0, 255)
    assert int(zp) == 0 and abs(float(scale) * 255 - 2.7) <= 2 * float(est.collector.width)


def test_empty_input_is_rejected():
    # PyTorch's observers accept an empty tensor as a no-op; ours raise ValueError naming x.
    for est in _histogram_estimators() + [calib.MinMaxEstimator(), calib.MSEEstimator()]:
        with pytest.raises(ValueError, match="empty"):
            est.observe(torch.tensor([]))
    with pytest.raises(ValueError, match="empty"):
        ops.histogram(torch.tensor([]), 8)


# ------------------------------------------------------------------------------------------------
# PyTorch test_workflow_ops: fake-quant numerics against ATen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fake_quant_matches_aten_on_ties_and_edges(dtype):
    scale, zp = 0.25, 3
    # exact .5 ties after scaling, the grid's edges and beyond, signed zeros
    x = torch.tensor([0.125, -0.125, 0.375, -0.375, 31.0, 31.875, 32.0, -33.0, -32.75, 0.0, -0.0, 1e6, -1e6])
    x = x.to(dtype)
    got = ops.fake_quant(x, scale, zp, -128, 127)
    want = torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, -128, 127).to(dtype)
    assert torch.equal(got, want)


def test_fake_quant_per_channel_matches_aten_random():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 6, generator=g) * 3
    for axis in range(3):
        n = x.shape[axis]
        scale = torch.rand(n, generator=g) * 0.1 + 0.01
        zp = torch.randint(-10, 10, (n,), generator=g, dtype=torch.int32)
        got = ops.fake_quant(x, scale, zp, -128, 127, axis=axis)
        want = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, -128, 127)
        assert torch.equal(got, want)


def test_fake_quant_gradient_is_straight_through_inside_the_grid():
    x = torch.tensor([-40.0, -1.0, 0.0, 1.0, 40.0], requires_grad=True)
    ops.fake_quant(x, 0.25, 0, -128, 127).sum().backward()
    xr = x.detach().clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(xr, 0.25, 0, -128, 127).sum().backward()
    assert torch.equal(x.grad, xr.grad) and x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------------
# NVIDIA pytorch-quantization calibrators


def test_max_calibrator_per_tensor_and_per_channel():
    g = torch.Generator().manual_seed(12345)
    x1, x2 = torch.rand(129, generator=g), torch.rand(127, generator=g)
    _, hi = calib.MinMaxEstimator().observe(x1).observe(x2).clip_range()
    assert float(hi) == float(torch.maximum(x1.max(), x2.max()))
    a, b = torch.rand(31, 63, 7, 7, generator=g), torch.rand(31, 63, 7, 7, generator=g)
    _, hi = calib.MinMaxEstimator(axis=0).observe(a).observe(b).clip_range()
    assert hi.shape == (31,) and torch.equal(hi, torch.maximum(a, b).amax(dim=(1, 2, 3)))
    est = calib.MinMaxEstimator(axis=0).observe(torch.rand(32, 63, 7, 7, generator=g))
    with pytest.raises(ValueError, match="channels"):
        est.observe(torch.rand(33, 63, 7, 7, generator=g))


def test_percentile_calibrator_cases():
    x = torch.arange(100, dtype=torch.float32)
    _, clip = calib.PercentileEstimator(percentile=90.0).observe(x).clip_range(-128)
    assert abs(float(clip) - 89.0) < 100 / 1024
    _, clip = calib.PercentileEstimator(percentile=80.0).observe(x).clip_range(0)
    assert abs(float(clip) - 79.0) < 100 / 1024
    est = calib.PercentileEstimator(percentile=99.0).observe(x).observe(torch.arange(0, 50, 0.5))
    assert abs(float(est.clip_range(-128)[1]) - 97.0) < 100 / 1024
    for bad in (-10.0, 200.0, 0.0):
        with pytest.raises(ValueError, match="percentile"):
            calib.PercentileEstimator(percentile=bad)


@pytest.mark.parametrize("grid", [(-128, 127), (0, 255)])
def test_entropy_calibrator_discards_one_outlier(grid):
    g = torch.Generator().manual_seed(12345)
    x = torch.rand(11, 7, 3, 3, generator=g)
    x[1, 1, 1, 1] = 10.0
    assert float(calib.EntropyEstimator().observe(x).clip(*grid)) < 1.1
    two = calib.EntropyEstimator().observe(x).observe(torch.rand(11, 7, 3, 3, generator=g))
    assert float(two.clip(*grid)) < 1.1


def test_entropy_calibrator_grown_range_stays_within_the_data():
    # pytorch-quantization's grow case. Its 'stretch' growth widens the last bin, so KL prefers ~255.
    # Ours regrids exactly ([0, 510] after growth): 255 and 256 stay separate spikes, every clip
    # keeping both ties at KL 0, and the tie goes to the larger clip, capped at the largest value seen.
    x1 = torch.tensor([0.0, 255, 255, 255, 255, 255])
    x2 = torch.tensor([0.0, 255, 255, 255, 255, 256])
    est = calib.EntropyEstimator().observe(x1).observe(x2)
    assert float(est.clip(0, 255)) == 256.0
    # in one batch the range is [0, 256] and the search clips the single 256 into 255's bin, as the peer
    clip = float(calib.EntropyEstimator().observe(torch.cat([x1, x2])).clip(0, 255))
    assert abs(clip - 255.0) < abs(clip - 256.0)


@pytest.mark.parametrize("value, grid", [(255.0, (-128, 127)), (512.0, (0, 255))])
def test_mse_calibrator_prefers_the_bulk_over_one_outlier(value, grid):
    # pytorch-quantization: 693 values at v and one at v + 1 -> the MSE clip is nearer v than v + 1.
    x = torch.ones(11, 7, 3, 3) * value
    x[1, 1, 1, 1] = value + 1
    for est in (calib.HistogramLpEstimator(num_candidates=1000), calib.MSEEstimator(axis=None, num_candidates=1000)):
        scale, zp = est.observe(x).qparams(*grid)
        clip = float(scale) * grid[1] if grid[0] < 0 else float(scale) * (grid[1] - grid[0])
        assert abs(clip - value) < abs(clip - value - 1), (type(est).__name__, clip)
