"""Robustness fixes of issue 14: histogram binning that cannot overflow (float64 reference), scales
whose reciprocal is finite, calibration collectors on extreme and degenerate data, entry points
under any grad mode that validate their arguments and never modify the caller's model."""

import importlib
import json
import math
from fractions import Fraction

import pytest
import torch

import pyquant
from pyquant import calib, int8, ops

from nets import resnet8

F32 = torch.finfo(torch.float32)
FLT_MAX = F32.max
SUBNORMAL = 1e-40  # < F32.tiny: finite, > 0, 1 / SUBNORMAL = inf in float32


pytestmark = pytest.mark.usefixtures("one_thread")


def histogram_float64(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """Naive reference: every element's bin (x - lo) * bins / (hi - lo) in float64, clamped, counted."""
    xd = x.reshape(-1).double()
    pos = (xd - lo) * bins / (hi - lo)
    idx = pos.clamp(0, bins - 1).floor().long()
    return torch.bincount(idx, minlength=bins)


def histogram_exact(values, bins: int, lo: float, hi: float) -> torch.Tensor:
    """Naive reference in exact rational arithmetic (a few values): floor((x - lo) * bins / (hi - lo)), clamped."""
    lo_q, width = Fraction(lo), Fraction(hi) - Fraction(lo)
    idx = [min(max(math.floor((Fraction(float(v)) - lo_q) * bins / width), 0), bins - 1) for v in values]
    return torch.bincount(torch.tensor(idx), minlength=bins)


# ------------------------------------------------------------------------------------------------
# 1. histogram: no overflow, no NaN index


@pytest.mark.parametrize("data", [
    torch.tensor([-FLT_MAX, 0.0, 1.0, FLT_MAX]),
    torch.tensor([-FLT_MAX] * 3 + [0.5] * 5),  # a -FLT_MAX mask value
    torch.tensor([FLT_MAX, FLT_MAX / 2, -FLT_MAX / 3, 1e30, -1e-30]),
    torch.linspace(-1, 1, 1001) * FLT_MAX,
])
@pytest.mark.parametrize("bins", [1, 7, 2048])
def test_histogram_of_extreme_values_matches_float64_reference(data, bins):
    counts, lo, hi = ops.histogram_range(data, bins)
    assert int(counts.sum()) == data.numel()
    assert torch.equal(counts, histogram_float64(data, bins, float(lo), float(hi)))


def test_histogram_near_flt_max_over_bins_spreads_over_the_bins():
    # (x - lo) * bins overflows float32 for this range: before the fix every value went to the top bin.
    bins = 2048
    hi = FLT_MAX / bins * 8
    x = torch.linspace(0, 1, 4096) * hi
    counts = ops.histogram(x, bins, 0.0, hi)
    assert torch.equal(counts, histogram_float64(x, bins, 0.0, float(torch.tensor(hi))))
    assert int(counts.max()) <= 3


@pytest.mark.parametrize("scale", [SUBNORMAL, 1e-45, F32.tiny, F32.tiny * 3])
def test_histogram_of_subnormal_maxima(scale):
    x = torch.linspace(0, 1, 999) * scale
    counts, lo, hi = ops.histogram_range(x, 64)
    assert int(counts.sum()) == 999
    assert torch.equal(counts, histogram_float64(x, 64, float(lo), float(hi)))


@pytest.mark.parametrize("value", [FLT_MAX, -FLT_MAX, 1e30, -2.0 ** 24, SUBNORMAL, 0.0])
def test_histogram_of_a_constant_channel_has_a_real_range(value):
    x = torch.full((10,), value)
    counts, lo, hi = ops.histogram_range(x, 16)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all() and bool((lo < hi).all())
    assert float(lo) <= value <= float(hi) and int(counts.sum()) == 10
    if abs(value) < 2 ** 23:  # torch.histc's [v - 1, v + 1]
        assert float(lo) == float(torch.tensor(value) - 1) and float(hi) == float(torch.tensor(value) + 1)


def test_histogram_per_channel_extreme_channels():
    x = torch.stack([torch.linspace(-1, 1, 50) * FLT_MAX, torch.linspace(-1, 1, 50), torch.full((50,), SUBNORMAL)])
    counts, lo, hi = ops.histogram_range(x, 32, axis=0)
    for c in range(3):
        assert torch.equal(counts[c], histogram_float64(x[c], 32, float(lo[c]), float(hi[c])))


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_histogram_all_inf_batch_raises(bad):
    with pytest.raises(ValueError, match="finite"):
        ops.histogram(torch.full((100,), bad), 16)
    with pytest.raises(ValueError, match="finite"):
        ops.histogram(torch.full((100,), bad), 16, -1.0, 1.0)
    for est in (calib.PercentileEstimator(), calib.HistogramLpEstimator(), calib.EntropyEstimator()):
        with pytest.raises(ValueError, match="finite"):
            est.observe(torch.full((4, 5), bad))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_histogram_half_precision_extremes(dtype):
    info = torch.finfo(dtype)
    x = torch.tensor([-info.max, 0.0, info.max, info.tiny / 4], dtype=dtype)
    counts, lo, hi = ops.histogram_range(x, 9)
    assert torch.equal(counts, histogram_float64(x.float(), 9, float(lo), float(hi)))


# ------------------------------------------------------------------------------------------------
# 2. scales: finite reciprocal, finite levels


def _fake_quant_variants(x, scale):
    s = torch.tensor([scale])
    z = torch.tensor([0], dtype=torch.int32)
    yield "fake_quant", lambda: ops.fake_quant(x, s, z, -128, 127)
    yield "fake_quant per-channel", lambda: ops.fake_quant(x, s.expand(x.shape[0]).clone(), z.expand(x.shape[0]).clone(), -128, 127, axis=0)
    yield "fake_quant out=", lambda: ops.fake_quant(x, s, z, -128, 127, out=torch.empty_like(x))
    yield "fake_quant grad", lambda: ops.fake_quant(x.clone().requires_grad_(), s, z, -128, 127)
    yield "fake_quant_lsq", lambda: ops.fake_quant_lsq(x, s, torch.zeros(1), -128, 127)


@pytest.mark.parametrize("scale", [SUBNORMAL, 1e-45, 2e-39])
def test_fake_quant_rejects_scales_with_infinite_reciprocal(scale):
    x = torch.zeros(4, 3)
    for name, call in _fake_quant_variants(x, scale):
        with pytest.raises(ValueError, match="scale.*reciprocal"):
            call()
    with pytest.raises(ValueError, match="alpha"):
        ops.fake_quant_pact(x, torch.tensor([1e-37]), 8)  # alpha / 255 is subnormal


def test_fake_quant_smallest_usable_scale_gives_no_nan():
    x = torch.tensor([0.0, F32.tiny, -F32.tiny * 100, 1.0, -FLT_MAX])
    for name, call in _fake_quant_variants(torch.stack([x, x, x]), F32.tiny):
        y = call().detach()
        assert torch.isfinite(y).all(), name
        assert float(y[0, 0]) == 0.0 and float(y[0, 1]) == F32.tiny, name


def test_fake_quant_rejects_scales_whose_levels_overflow():
    x = torch.zeros(2, 3)
    for name, call in _fake_quant_variants(x, FLT_MAX / 100):
        with pytest.raises(ValueError, match="scale.*finite"):
            call()
    # the largest usable scale still dequantizes every level to a finite value
    top = float(calib.base.usable_scale(torch.tensor([FLT_MAX]), -128, 127))
    y = ops.fake_quant(torch.tensor([FLT_MAX, -FLT_MAX, 0.0]), top, 0, -128, 127)
    assert torch.isfinite(y).all() and float(y[0]) == float(torch.tensor(top) * 127)


@pytest.mark.parametrize("scale", [SUBNORMAL, FLT_MAX / 100, float("nan"), -1.0])
def test_checked_mode_validates_the_parameters_where_they_live(monkeypatch, scale):
    # PYQUANT_CHECK=1 runs the device-side check (tensor ops, the path CUDA tensors take) before the host check:
    # its message carries the mode's name, so these cases prove it ran and rejected what the host would
    monkeypatch.setenv("PYQUANT_CHECK", "1")
    assert ops.checked_mode()
    x = torch.zeros(4, 3)
    for name, call in _fake_quant_variants(x, scale):
        with pytest.raises(ValueError, match=r"scale.*PYQUANT_CHECK"):
            call()
    with pytest.raises(ValueError, match=r"zero_point.*PYQUANT_CHECK"):
        ops.fake_quant(x, torch.tensor([0.1]), torch.tensor([200], dtype=torch.int32), -128, 127)
    with pytest.raises(ValueError, match=r"alpha.*PYQUANT_CHECK"):
        ops.fake_quant_pact(x, torch.tensor([1e-37]), 8)


def test_checked_mode_leaves_good_parameters_bit_identical(monkeypatch):
    x = torch.randn(64, 8) * 3
    s, z = torch.rand(8) * 0.1 + 0.01, torch.randint(-20, 20, (8,), dtype=torch.int32)
    plain = ops.fake_quant(x, s, z, -128, 127, axis=1)
    monkeypatch.setenv("PYQUANT_CHECK", "1")
    assert torch.equal(ops.fake_quant(x, s, z, -128, 127, axis=1), plain)
    assert torch.equal(ops.fake_quant(x, s, z, -128, 127, axis=1),
                       torch.fake_quantize_per_channel_affine(x, s, z, 1, -128, 127))


def _estimators():
    return [
        calib.MinMaxEstimator(), calib.MinMaxEstimator(symmetric=True), calib.MinMaxEstimator(axis=0),
        calib.PercentileEstimator(), calib.PercentileEstimator(symmetric=False), calib.PercentileEstimator(axis=0),
        calib.HistogramLpEstimator(), calib.HistogramLpEstimator(symmetric=False), calib.EntropyEstimator(),
        calib.EntropyEstimator(axis=0), calib.MSEEstimator(axis=0), calib.MSEEstimator(axis=None, symmetric=False),
        calib.SAWBEstimator(axis=0),
    ]


def _grids_for(est):
    return [(-128, 127)] if isinstance(est, calib.SAWBEstimator) else [(-128, 127), (0, 255), (-8, 7)]


@pytest.mark.parametrize("magnitude", [SUBNORMAL, 1e-44, F32.tiny, FLT_MAX, FLT_MAX / 3])
def test_every_estimator_gives_usable_scales_on_extreme_data(magnitude):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 64, generator=g) * 2 - 1) * magnitude
    for est in _estimators():
        est.observe(x)
        for qmin, qmax in _grids_for(est):
            scale, zp = est.qparams(qmin, qmax)
            name = f"{type(est).__name__} axis={est.axis} [{qmin}, {qmax}] on |x| <= {magnitude:g}"
            assert torch.isfinite(scale).all() and bool((scale > 0).all()), name
            assert torch.isfinite(1 / scale).all(), name
            assert torch.isfinite(scale * (qmax - qmin)).all(), name
            axis = 0 if scale.numel() > 1 else None
            y = ops.fake_quant(x, scale, zp, qmin, qmax, axis=axis)
            assert torch.isfinite(y).all(), name


def test_symmetric_range_of_flt_max_has_finite_top_level():
    scale, zp = calib.qparams_from_range(torch.tensor([-FLT_MAX]), torch.tensor([FLT_MAX]), -128, 127, True)
    assert torch.isfinite(scale * 127) and torch.isfinite(scale * 255)
    scale, zp = calib.qparams_from_range(torch.tensor([-FLT_MAX]), torch.tensor([FLT_MAX]), 0, 255, False)
    assert torch.isfinite(scale * 255) and int(zp) == 128  # the range's midpoint 0 is level 128 (rounded)


def test_range_search_on_extreme_data_matches_reference_candidates():
    ref = importlib.import_module("pyquant.reference.range_search")  # the package re-exports the function
    for magnitude in (SUBNORMAL, FLT_MAX):
        x = torch.linspace(-1, 1, 101).reshape(1, -1) * magnitude
        for symmetric, (qmin, qmax) in ((True, (-128, 127)), (False, (0, 255))):
            scale, zp, _ = ops.range_search(x, qmin, qmax, axis=0, symmetric=symmetric, num_candidates=20)
            cand_s, cand_z = ref.candidate_params(x.float(), qmin, qmax, symmetric, 20)
            k = int((cand_s[0] == scale[0]).nonzero()[0])  # the chosen scale is one of the reference's candidates
            assert int(cand_z[0, k]) == int(zp[0])
            assert torch.isfinite(1 / scale).all() and torch.isfinite(scale * (qmax - qmin)).all()


# ------------------------------------------------------------------------------------------------
# 3. the histogram collector


def test_tiny_first_batch_then_wide_batch_gives_the_right_percentile():
    g = torch.Generator().manual_seed(0)
    tiny = (torch.rand(1000, generator=g) * 2 - 1) * 1e-38
    wide = (torch.rand(100000, generator=g) * 2 - 1) * 1000
    est = calib.PercentileEstimator(percentile=99.0).observe(tiny).observe(wide)
    want = torch.quantile(torch.cat([tiny, wide]).abs().double(), 0.99).item()
    _, clip = est.clip_range(-128)
    width = float(est.collector.width[0])
    assert width < 1.0  # the range grew to a power-of-two multiple below 2 * 1000
    assert abs(float(clip) - want) <= 2 * width


def test_range_growth_to_flt_max_keeps_the_old_counts():
    est = calib.PercentileEstimator(percentile=100.0, bins=64)
    est.observe(torch.tensor([0.5, -0.25])).observe(torch.tensor([FLT_MAX, -FLT_MAX]))
    c = est.collector
    assert float(c.amax[0]) == FLT_MAX and int(c.counts.sum()) == 4
    # exact rational bins: float64 would round -0.25 + FLT_MAX up to FLT_MAX and move -0.25 into bin 64
    assert torch.equal(c.counts[0], histogram_exact([0.5, -0.25, FLT_MAX, -FLT_MAX], 128, -FLT_MAX, FLT_MAX))
    _, clip = est.clip_range(-128)
    assert float(clip) == FLT_MAX


def test_all_zero_first_batch_does_not_pin_the_range():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(20000, generator=g) * 1e-5
    est = calib.PercentileEstimator(percentile=99.0).observe(torch.zeros(100)).observe(small)
    assert float(est.collector.amax[0]) == float(small.abs().max())
    want = torch.quantile(torch.cat([torch.zeros(100), small]).abs().double(), 0.99).item()
    _, clip = est.clip_range(-128)
    assert abs(float(clip) - want) <= 2 * float(est.collector.width[0])
    # the zeros stay counted, in the bin that holds 0
    assert int(est.collector.counts[0, est.collector.bins]) >= 100 and int(est.collector.counts.sum()) == 20100


@pytest.mark.parametrize("grid", [(-128, 127), (0, 255), (-8, 7)])
def test_all_zero_input_gives_scale_one_zero_point_zero(grid):
    x = torch.zeros(3, 50)
    for est in _estimators():
        if grid not in _grids_for(est):
            continue
        est.observe(x).observe(x)
        scale, zp = est.qparams(*grid)
        assert torch.equal(scale, torch.ones_like(scale)), type(est).__name__
        assert torch.equal(zp, torch.zeros_like(zp)), type(est).__name__


@pytest.mark.parametrize("grid", [(0, 255), (-128, 127)])
def test_entropy_clips_one_outlier_at_ten_times_the_bulk(grid):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(20000, generator=g), torch.tensor([10.0])])
    clip = float(calib.EntropyEstimator().observe(x).clip(*grid))
    assert 0.5 < clip < 1.2


def test_entropy_search_below_the_level_count_matches_the_loop():
    from pyquant import reference
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        h = torch.randint(0, 6, (40,), generator=g).double()
        fast = calib.kl_divergences(h, 32, 5)  # candidates i = 5..31 keep fewer bins than levels
        slow = torch.tensor(reference.kl_divergences_loop(h.tolist(), 32, 5), dtype=torch.float64)
        assert torch.equal(torch.isfinite(fast), torch.isfinite(slow))
        fin = torch.isfinite(slow)
        torch.testing.assert_close(fast[fin], slow[fin].clamp(min=0), atol=1e-9, rtol=0)


@pytest.mark.parametrize("make", [
    lambda: calib.MinMaxEstimator(axis=0), lambda: calib.PercentileEstimator(axis=0),
    lambda: calib.EntropyEstimator(axis=0), lambda: calib.HistogramLpEstimator(axis=0),
])
def test_per_channel_estimators_reject_a_channel_count_change(make):
    est = make().observe(torch.randn(1, 10))
    with pytest.raises(ValueError, match="channels"):
        est.observe(torch.randn(3, 10))


# ------------------------------------------------------------------------------------------------
# 4. entry points: any grad mode, validated data, the caller's model untouched


SHAPE = (3, 16, 16)
FAST = dict(num_samples=4, data_iterations=2, data_batch_size=4, progress=False)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


GRAD_MODES = {
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
    "enable_grad": torch.enable_grad,
}


@pytest.fixture(scope="module")
def reference_quantized():
    torch.manual_seed(0)
    model = resnet8()
    return model, pyquant.quantize(model, "zeroq", w_bits=8, a_bits=8, input_shape=SHAPE, **FAST)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_quantize_works_in_any_grad_mode(mode, reference_quantized):
    model, ref = reference_quantized
    before = _state(model)
    with GRAD_MODES[mode]():
        q = pyquant.quantize(model, "zeroq", w_bits=8, a_bits=8, input_shape=SHAPE, **FAST)
    _assert_same_state(model, before)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(q(x), ref(x), rtol=0, atol=0)  # same seed, same result as in grad mode


def test_quantize_with_inference_mode_data():
    model = resnet8()
    with torch.inference_mode():
        data = torch.randn(4, *SHAPE)
        q = pyquant.quantize(model, "dsg", w_bits=8, a_bits=8, input_shape=SHAPE, data=data, progress=False,
                             abn=True)
    assert torch.isfinite(q(torch.randn(2, *SHAPE))).all()


@pytest.mark.parametrize("data, err, match", [
    ([torch.zeros(3, 16, 16)], TypeError, "data must be a torch.Tensor"),
    (torch.zeros(3, 16, 16), ValueError, r"data must have shape \[N, 3, 16, 16\]"),
    (torch.zeros(2, 3, 32, 32), ValueError, r"data must have shape \[N, 3, 16, 16\]"),
    (torch.zeros(0, 3, 16, 16), ValueError, "data must hold at least one sample"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.long), TypeError, "data must be a floating-point"),
    (torch.full((2, 3, 16, 16), float("nan")), ValueError, "data must be finite"),
])
def test_quantize_validates_data(data, err, match):
    with pytest.raises(err, match=match):
        pyquant.quantize(resnet8(), "zeroq", input_shape=SHAPE, data=data, progress=False)
    with pytest.raises(err, match=match.replace("data", "holdout")):
        pyquant.quantize(resnet8(), "zeroq", input_shape=SHAPE, data=torch.zeros(2, *SHAPE), holdout=data,
                         progress=False)


@pytest.mark.parametrize("method", ["zeroq", "dsg", "aac", "genie"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_distill_entry_points_in_any_grad_mode(method, mode):
    model = resnet8()
    before = _state(model)
    gen = getattr(pyquant.distill, method)
    ref = gen(model, 2, SHAPE, batch_size=2, iterations=2, seed=3, progress=False)
    with GRAD_MODES[mode]():
        got = gen(model, 2, SHAPE, batch_size=2, iterations=2, seed=3, progress=False)
    assert not got.is_inference() and not got.requires_grad
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    _assert_same_state(model, before)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_int8_convert_in_any_grad_mode_leaves_the_model_alone(mode, reference_quantized):
    _, fq = reference_quantized
    before = _state(fq)
    ref = int8.convert(fq)
    with GRAD_MODES[mode]():
        q = int8.convert(fq)
    _assert_same_state(fq, before)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(q(x), ref(x), rtol=0, atol=0)


def _saved(tmp_path, fq):
    path = str(tmp_path / "m.safetensors")
    int8.save(int8.convert(fq), path)
    return path


def _rewrite(path, out, edit_tensors=None, edit_manifest=None):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta["pyquant.int8"])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_manifest:
        edit_manifest(manifest)
    save_file(tensors, out, metadata={"pyquant.int8": json.dumps(manifest)})


def test_int8_load_of_incomplete_or_corrupt_files_raises_clearly(tmp_path, reference_quantized):
    _, fq = reference_quantized
    path = _saved(tmp_path, fq)
    assert isinstance(int8.load(path), torch.fx.GraphModule)

    missing_tensor = str(tmp_path / "missing_tensor.safetensors")
    _rewrite(path, missing_tensor, edit_tensors=lambda t: t.pop(sorted(t)[0]))
    with pytest.raises(ValueError, match="misses"):
        int8.load(missing_tensor)

    def drop_node(m):
        m["nodes"] = [n for n in m["nodes"] if n["op"] != "placeholder"]
    missing_node = str(tmp_path / "missing_node.safetensors")
    _rewrite(path, missing_node, edit_manifest=drop_node)
    with pytest.raises(ValueError, match="refers to node"):
        int8.load(missing_node)

    def drop_field(m):
        del m["nodes"][1]["args"]
    no_field = str(tmp_path / "no_field.safetensors")
    _rewrite(path, no_field, edit_manifest=drop_field)
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        int8.load(no_field)

    raw = open(path, "rb").read()
    for name, blob in (("truncated", raw[: len(raw) // 2]), ("garbage", b"\x07" * 64), ("empty", b"")):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match="load:"):
            int8.load(str(bad))
    with pytest.raises(FileNotFoundError):
        int8.load(str(tmp_path / "nope.safetensors"))


def test_int8_save_and_export_validate_paths_and_models(tmp_path, reference_quantized):
    model, fq = reference_quantized
    q = int8.convert(fq)
    for call, who in ((lambda p: int8.save(q, p), "save"),
                      (lambda p: int8.export_onnx(q, p, input_shape=SHAPE), "export_onnx")):
        with pytest.raises(ValueError, match=f"{who}: the folder of path .* does not exist"):
            call(str(tmp_path / "missing" / "m.bin"))
        with pytest.raises(ValueError, match=f"{who}: path .* is a folder"):
            call(str(tmp_path))
        with pytest.raises(TypeError, match=f"{who}: path must be a str"):
            call(3)
        assert not any(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(TypeError, match="fake-quant network; pass the result of pyquant.int8.convert"):
        int8.export_onnx(fq, str(tmp_path / "m.onnx"), input_shape=SHAPE)
    with pytest.raises(ValueError, match=r"input_shape \(5, 16, 16\) does not fit the model"):
        int8.export_onnx(q, str(tmp_path / "m.onnx"), input_shape=(5, 16, 16))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_int8_save_load_export_in_any_grad_mode_leave_the_model_alone(tmp_path, mode, reference_quantized):
    _, fq = reference_quantized
    q = int8.convert(fq)
    before = _state(q)
    x = torch.randn(2, *SHAPE)
    with GRAD_MODES[mode]():
        int8.save(q, str(tmp_path / "m.safetensors"))
        loaded = int8.load(str(tmp_path / "m.safetensors"))
        int8.export_onnx(q, str(tmp_path / "m.onnx"), input_shape=SHAPE)
    _assert_same_state(q, before)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.parametrize("method", ["zeroq", "dsg", "aac", "genie"])
def test_distill_rejects_an_input_shape_that_does_not_fit_and_keeps_the_model(method):
    model = resnet8().train()
    before = _state(model)
    with pytest.raises(ValueError, match=r"input_shape \(4, 16, 16\) does not fit the model"):
        getattr(pyquant.distill, method)(model, 2, (4, 16, 16), batch_size=2, iterations=1, progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        getattr(pyquant.distill, method)("resnet", 2, SHAPE, batch_size=2, iterations=1, progress=False)
    _assert_same_state(model, before)
    assert model.training  # the check ran in eval mode and restored the caller's flag


@pytest.mark.parametrize("step", [
    lambda bad: pyquant.dfq.cross_layer_equalization(bad),
    lambda bad: pyquant.dfq.absorb_high_bias(bad, {}),
    lambda bad: pyquant.dfq.analytic_bias_correction(bad, {}),
    lambda bad: pyquant.dfq.empirical_bias_correction(bad, resnet8(), torch.zeros(1, *SHAPE)),
    lambda bad: pyquant.dfq.adaptive_bn(bad, {}, torch.zeros(1, *SHAPE)),
])
def test_recipe_steps_reject_a_model_that_is_not_a_module(step):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        step("resnet8")
