"""pyquant.quantize and the recipes: contract, progress lines, report, bad input."""

import pytest
import torch
from torch import nn

import pyquant
from pyquant.quant import FakeQuantizer, QuantConv2d, act_quantizers, quant_layers, sqnr_db

from nets import bn_stats_from_data, mobilenet, no_bn_cnn, resnet8, torchvision_style_resnet

FAST = dict(num_samples=8, data_iterations=3, data_batch_size=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipes_are_dataclasses_listing_their_steps():
    assert {"zeroq", "dsg", "dfq", "aac_abn", "squant", "best"} <= set(pyquant.RECIPES)
    dfq_steps = pyquant.RECIPES["dfq"].steps
    assert dfq_steps.index("fold_bn") < dfq_steps.index("cle") < dfq_steps.index("absorb_high_bias")
    assert "bias_correction:analytic" in dfq_steps and not any(s.startswith("distill") for s in dfq_steps)
    assert "distill:zeroq" in pyquant.RECIPES["zeroq"].steps
    assert "abn" in pyquant.RECIPES["aac_abn"].steps
    r = pyquant.Recipe(name="mine", data="dsg", bias_correction="empirical")
    assert r.replace(abn=True).abn and not r.abn
    with pytest.raises(TypeError, match="unknown recipe setting"):
        r.replace(nonsense=1)
    with pytest.raises(ValueError, match="act_estimator"):
        pyquant.Recipe(act_estimator="magic")


@pytest.mark.parametrize("recipe", ["zeroq", "dsg", "aac_abn", "best"])
def test_quantize_with_data_recipes(recipe, capsys):
    # BN statistics of N(0, 1) inputs: the few-iteration synthetic data and the test inputs both fit them
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = pyquant.quantize(model, recipe, w_bits=8, a_bits=8, input_shape=(3, 16, 16), **FAST)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[pyquant.quantize]")]
    assert len(lines) == len(q.recipe.steps)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(isinstance(m, (FakeQuantizer, QuantConv2d)) for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    layers = quant_layers(q)
    assert len(q.quant_report.layers) == len(layers) > 0
    assert all(r.weight_bits == 8 and r.output_sqnr_db is not None for r in q.quant_report.layers)
    assert all(a.calibrated for a in act_quantizers(q).values())
    x = torch.randn(8, 3, 16, 16)
    assert sqnr_db(model(x), q(x)) > 15.0
    assert "all layers quantized" in str(q.quant_report)
    pooled = act_quantizers(q)[layers["linear"].input_quantizer_name]
    assert pooled.tied_to == "aq_layer3_0_relu2"  # average-pooled features share their source's grid
    torch.testing.assert_close(pooled.scale, act_quantizers(q)["aq_layer3_0_relu2"].scale)


def test_abn_below_bits_skips_abn_at_8_bit_only():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data = torch.randn(32, 3, 16, 16)
    x = torch.randn(8, 3, 16, 16)
    # best's own pipeline: select_among=() switches its per-model choice off (tests/test_selection.py)
    kw = dict(input_shape=(3, 16, 16), data=data, progress=False, select_among=())
    q8 = pyquant.quantize(model, "best", w_bits=8, a_bits=8, **kw)
    assert not q8.recipe.abn and "abn" not in [s["step"] for s in q8.quant_report.steps]
    # identical to the same recipe with ABN switched off by hand
    torch.testing.assert_close(q8(x), pyquant.quantize(model, "best", w_bits=8, a_bits=8, abn=False, **kw)(x),
                               rtol=0, atol=0)
    for w, a in ((6, 6), (4, 8), (8, 4)):
        q = pyquant.quantize(model, "best", w_bits=w, a_bits=a, **kw)
        assert q.recipe.abn and "abn" in [s["step"] for s in q.quant_report.steps], (w, a)
    # None = always, as for aac_abn
    assert pyquant.quantize(model, "best", w_bits=8, a_bits=8, abn_below_bits=None, **kw).recipe.abn
    with pytest.raises(ValueError, match="abn_below_bits"):
        pyquant.Recipe(abn_below_bits=12)
    with pytest.raises(TypeError, match="abn_below_bits"):
        pyquant.Recipe(abn_below_bits=8.0)


def test_reconstruct_below_bits_reconstructs_only_below_the_width():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data = torch.randn(16, 3, 16, 16)
    kw = dict(input_shape=(3, 16, 16), data=data, progress=False, select_among=(),
              reconstruct={"iterations": 2, "batch_size": 8}, reconstruct_below_bits=5)
    for (w, a), runs in (((8, 8), False), ((6, 6), False), ((4, 8), True), ((8, 4), True), ((3, 3), True)):
        q = pyquant.quantize(model, "lp_squant", w_bits=w, a_bits=a, **kw)
        assert ("reconstruct" in [s["step"] for s in q.quant_report.steps]) == runs, (w, a)
        assert (q.recipe.reconstruct is not None) == runs and hasattr(q, "reconstruct_log") == runs, (w, a)
    with pytest.raises(ValueError, match="reconstruct_below_bits"):
        pyquant.Recipe(reconstruct_below_bits=2)
    with pytest.raises(ValueError, match="reconstruct needs data"):
        pyquant.Recipe(data=None, act_estimator="bn", reconstruct={})


def test_input_calibration_standardized_sets_only_the_input_quantizer():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    # wider than the N(0, 1) inputs the BN statistics came from, as synthetic images are
    data = 2.5 * torch.randn(32, 3, 16, 16) + 0.5
    kw = dict(input_shape=(3, 16, 16), data=data, progress=False, abn=False, select_among=())
    plain = pyquant.quantize(model, "best", w_bits=6, a_bits=6, input_calibration="data", **kw)
    std = pyquant.quantize(model, "best", w_bits=6, a_bits=6, input_calibration="standardized", **kw)
    (name, q_in), = pyquant.quant.input_quantizers(std).items()
    assert name == "aq_x"
    standardized = (data - data.mean(dim=(2, 3), keepdim=True)) / data.std(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(standardized.std(dim=(2, 3)), torch.ones(32, 3))
    want = FakeQuantizer(q_in.spec).calibrate(standardized)
    torch.testing.assert_close(q_in.scale, want.scale, rtol=0, atol=0)
    torch.testing.assert_close(q_in.zero_point, want.zero_point, rtol=0, atol=0)
    assert float(q_in.scale) < 0.6 * float(act_quantizers(plain)["aq_x"].scale)
    for n, q in act_quantizers(std).items():
        if n != "aq_x":
            torch.testing.assert_close(q.scale, act_quantizers(plain)[n].scale, rtol=0, atol=0)
    with pytest.raises(ValueError, match="input_calibration"):
        pyquant.Recipe(input_calibration="magic")
    with pytest.raises(ValueError, match="input_calibration"):
        pyquant.RECIPES["dfq"].replace(input_calibration="standardized")
    with pytest.raises(ValueError, match="abn_bn_weight"):
        pyquant.Recipe(abn_bn_weight=1.5)


@pytest.mark.parametrize("recipe", ["dfq", "best"])
def test_recipes_on_a_torchvision_style_resnet(recipe):
    model = bn_stats_from_data(torchvision_style_resnet(), torch.randn(256, 3, 32, 32))
    q = pyquant.quantize(model, recipe, w_bits=8, a_bits=8, input_shape=(3, 32, 32), progress=False, **(
        FAST if recipe == "best" else {}))
    assert all(a.calibrated for a in act_quantizers(q).values())
    assert len(q.quant_report.layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    x = torch.randn(16, 3, 32, 32)
    assert sqnr_db(model(x), q(x)) > 15.0


def test_dfq_recipe_on_mobilenet_and_without_bn():
    model = mobilenet()
    q = pyquant.quantize(model, "dfq", w_bits=8, a_bits=8, input_shape=(3, 16, 16), progress=False)
    assert q.relu6_replaced > 0
    assert any(m.groups > 1 for m in quant_layers(q).values() if isinstance(m, QuantConv2d))
    assert all(a.calibrated for a in act_quantizers(q).values())
    plain = no_bn_cnn()
    q2 = pyquant.quantize(plain, "dfq", w_bits=8, a_bits=8, input_shape=(3, 8, 8), progress=False)
    x = torch.randn(4, 3, 8, 8)
    assert sqnr_db(plain(x), q2(x)) > 20.0
    with pytest.raises(ValueError, match="no BatchNorm"):
        pyquant.quantize(plain, "zeroq", input_shape=(3, 8, 8), progress=False)


def test_first_last_bits_override_and_report_convention():
    q = pyquant.quantize(resnet8(), "zeroq", w_bits=4, a_bits=4, input_shape=(3, 16, 16), first_last_bits=8,
                         progress=False, **FAST)
    bits = {r.name: r.weight_bits for r in q.quant_report.layers}
    assert bits["conv1"] == 8 and bits["linear"] == 8 and bits["layer1.0.conv1"] == 4
    assert q.quant_report.convention == "first/last layer at 8 bit"


def test_input_bits_override_and_report_convention():
    x = torch.randn(4, 3, 16, 16)
    q = pyquant.quantize(resnet8(), "zeroq", w_bits=4, a_bits=4, input_shape=(3, 16, 16), input_bits=8,
                         progress=False, **FAST)
    aq = q.get_submodule(q.conv1.input_quantizer_name)
    assert aq.bits == 8 and aq.qmax - aq.qmin == 255
    assert torch.unique(aq(x)).numel() > 16  # really an 8-bit grid, not 4 levels relabelled
    assert q.quant_report.convention == "all layers quantized, network input at 8 bit"
    with pytest.raises(ValueError, match="input_bits"):
        pyquant.quantize(resnet8(), "zeroq", input_shape=(3, 16, 16), input_bits=1, progress=False, **FAST)


def test_bad_input():
    model = resnet8()
    for bad in (1, 9):
        with pytest.raises(ValueError, match="w_bits"):
            pyquant.quantize(model, "dfq", w_bits=bad, input_shape=(3, 16, 16), progress=False)
    with pytest.raises(ValueError, match="a_bits"):
        pyquant.quantize(model, "dfq", a_bits=0, input_shape=(3, 16, 16), progress=False)
    with pytest.raises(ValueError, match="input_shape"):
        pyquant.quantize(model, "dfq", input_shape=(4, 16, 16), progress=False)
    with pytest.raises(ValueError, match="input_shape"):
        pyquant.quantize(model, "dfq", input_shape=(3, -1, 16), progress=False)
    with pytest.raises(ValueError, match="unknown recipe"):
        pyquant.quantize(model, "nope", input_shape=(3, 16, 16), progress=False)
    with pytest.raises(ValueError, match="device meta"):
        pyquant.quantize(resnet8().to("meta"), "dfq", input_shape=(3, 16, 16), progress=False)
    lstm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4 * 14 * 14))
    with pytest.raises(ValueError, match="LayerNorm"):
        pyquant.quantize(lstm, "dfq", input_shape=(3, 16, 16), progress=False)
    if not pyquant.build_info()["cuda"] and torch.cuda.is_available():  # pragma: no cover
        with pytest.raises(ValueError, match="CUDA"):
            pyquant.quantize(resnet8().cuda(), "dfq", input_shape=(3, 16, 16), progress=False)


def test_squant_recipe_rounds_weights_with_squant():
    from pyquant.dfq.squant import squant_weight

    model = resnet8()
    q = pyquant.quantize(model, "squant", w_bits=4, a_bits=8, input_shape=(3, 16, 16), progress=False)
    for name, m in quant_layers(q).items():
        wq = m.weight_quantizer
        expected = squant_weight(m.weight_fp, wq.scale, wq.zero_point, wq.qmin, wq.qmax, axis=0)
        torch.testing.assert_close(m.quantized_weight(), expected, rtol=0, atol=0)
    assert all(r.weight_sqnr_db > 5 for r in q.quant_report.layers)


def test_mixed_precision_allocation_respects_the_budget():
    model = bn_stats_from_data(resnet8(), torch.randn(128, 3, 16, 16))
    q = pyquant.quantize(model, "zeroq", w_bits=8, a_bits=8, input_shape=(3, 16, 16), mixed_precision_bits=5.0,
                         progress=False, **FAST)
    layers = quant_layers(q)
    bits = {n: m.weight_quantizer.bits for n, m in layers.items()}
    assert set(bits.values()) <= {2, 4, 8} and len(set(bits.values())) > 1
    total = sum(m.weight.numel() * bits[n] for n, m in layers.items())
    assert total <= 5.0 * sum(m.weight.numel() for m in layers.values())


def test_selecting_recipe_selects_among_calibrations_then_reconstructs_the_chosen_once(monkeypatch):
    import pyquant.finetune as finetune
    import pyquant.selection
    from pyquant.recipes import BEST_RECONSTRUCTION

    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data, holdout = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    rec = dict(BEST_RECONSTRUCTION, iterations=2)
    calls = []
    real = finetune.reconstruct  # what the pipeline imports when it reconstructs

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "reconstruct", counting)
    real_select, during_selection = pyquant.selection.select, []

    def recording_select(*args, **kwargs):
        result = real_select(*args, **kwargs)  # builds and judges every candidate
        during_selection.append(len(calls))
        return result

    monkeypatch.setattr(pyquant.selection, "select", recording_select)
    kw = dict(w_bits=4, a_bits=4, input_shape=(3, 16, 16), data=data, progress=False)
    q = pyquant.quantize(model, "best", holdout=holdout, select_among=("dfq", "squant"), reconstruct=rec,
                         reconstruct_below_bits=None, reconstruct_keep_ratio=None, **kw)
    # the candidates were judged as calibrations (no reconstruction while selecting); then the chosen one, once
    assert during_selection == [0] and len(calls) == 1
    chosen = q.selection.chosen
    assert len(q.selection.candidates) == 3 and q.quant_report.recipe == f"best -> {chosen} + reconstruct"
    assert "reconstruct" in [s["step"] for s in q.quant_report.steps]
    # the selection is the calibration-only selection, and the model is the chosen pipeline plus reconstruction
    calibrated = pyquant.quantize(model, "best", holdout=holdout, select_among=("dfq", "squant"), reconstruct=None,
                                  **kw)
    assert calibrated.selection.chosen == chosen and len(calls) == 1 and during_selection == [0, 1]
    base = "best" if chosen == "best" else pyquant.RECIPES[chosen]
    direct = pyquant.quantize(model, base, select_among=(), reconstruct=rec, reconstruct_below_bits=None,
                              reconstruct_keep_ratio=None, **kw)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(q(x), direct(x), rtol=0, atol=0)


def test_best_reconstructs_below_4_bit_only():
    from pyquant.recipes import BEST_RECONSTRUCTION

    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    kw = dict(input_shape=(3, 16, 16), data=torch.randn(16, 3, 16, 16), progress=False, select_among=(),
              reconstruct=dict(BEST_RECONSTRUCTION, iterations=2))  # best's settings, 2 iterations for speed
    for (w, a), runs in (((6, 6), False), ((4, 8), False), ((4, 4), False), ((3, 3), True), ((8, 3), True)):
        q = pyquant.quantize(model, "best", w_bits=w, a_bits=a, **kw)
        assert ("reconstruct" in [s["step"] for s in q.quant_report.steps]) == runs, (w, a)


def test_reconstruction_is_kept_only_when_the_noise_divergence_falls_below_the_ratio():
    from pyquant.recipes import BEST_RECONSTRUCTION
    from pyquant.selection import noise_divergence

    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    kw = dict(w_bits=3, a_bits=3, input_shape=(3, 16, 16), data=torch.randn(16, 3, 16, 16), progress=False,
              select_among=(), seed=1)
    rec = dict(BEST_RECONSTRUCTION, iterations=20)
    calibrated = pyquant.quantize(model, "best", reconstruct=None, **kw)
    unchecked = pyquant.quantize(model, "best", reconstruct=rec, reconstruct_keep_ratio=None, **kw)
    assert unchecked.quant_report.reconstruction is None
    before = noise_divergence(model, calibrated, (3, 16, 16), seed=1)
    after = noise_divergence(model, unchecked, (3, 16, 16), seed=1)
    assert before != after  # the reconstruction changed the network
    assert after < before  # so the ratios below fall on both sides of the decision
    x, outcomes = torch.randn(8, 3, 16, 16), set()
    for ratio in (1e-6, 1.0, after / before * 1.01, after / before * 0.99):
        q = pyquant.quantize(model, "best", reconstruct=rec, reconstruct_keep_ratio=ratio, **kw)
        check = q.quant_report.reconstruction
        assert check.calibrated == pytest.approx(before, rel=1e-12)
        assert check.reconstructed == pytest.approx(after, rel=1e-12)
        assert check.kept == (after < ratio * before) and check.threshold == ratio
        expected = unchecked if check.kept else calibrated  # the discarded reconstruction leaves no trace
        with torch.no_grad():
            torch.testing.assert_close(q(x), expected(x), rtol=0, atol=0)
        assert ("discarded" in str(check)) != check.kept
        outcomes.add(check.kept)
    assert outcomes == {True, False}
    for bad in (0, 1.5, float("nan"), "0.8", True):
        with pytest.raises(ValueError, match="reconstruct_keep_ratio"):
            pyquant.Recipe(reconstruct_keep_ratio=bad)


def test_selecting_recipe_reports_a_discarded_reconstruction(tmp_path):
    from pyquant.recipes import BEST_RECONSTRUCTION

    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data, holdout = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    kw = dict(w_bits=3, a_bits=3, input_shape=(3, 16, 16), data=data, holdout=holdout, progress=False,
              select_among=("dfq",))
    q = pyquant.quantize(model, "best", reconstruct=dict(BEST_RECONSTRUCTION, iterations=2),
                         reconstruct_keep_ratio=1e-6, **kw)
    calibrated = pyquant.quantize(model, "best", reconstruct=None, **kw)
    chosen = q.selection.chosen
    assert not q.quant_report.reconstruction.kept
    assert q.quant_report.recipe == f"best -> {chosen} (reconstruction discarded)"
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(q(x), calibrated(x), rtol=0, atol=0)
    text = open(q.quant_report.write(str(tmp_path))).read()
    assert "## Per-model choices" in text and "reconstruction discarded" in text and f"selected {chosen!r}" in text


@pytest.mark.parametrize("chosen", ["squant", "dfq"])
def test_selecting_recipe_reconstructs_a_data_free_choice_on_the_selection_data(monkeypatch, chosen):
    import pyquant.selection
    from pyquant.recipes import BEST_RECONSTRUCTION

    real_select = pyquant.selection.select

    def choosing(fp, builders, *args, **kwargs):  # as if the data-free candidate had measured closest
        return real_select(fp, [b for b in builders if b[0] == chosen], *args, **kwargs)

    monkeypatch.setattr(pyquant.selection, "select", choosing)
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data, holdout = torch.randn(16, 3, 16, 16), torch.randn(8, 3, 16, 16)
    q = pyquant.quantize(model, "best", w_bits=3, a_bits=3, input_shape=(3, 16, 16), data=data, holdout=holdout,
                         progress=False, select_among=(chosen,), reconstruct=dict(BEST_RECONSTRUCTION, iterations=2),
                         reconstruct_keep_ratio=None)
    assert q.quant_report.recipe == f"best -> {chosen} + reconstruct"
    assert "reconstruct" in [s["step"] for s in q.quant_report.steps]
    assert not any(s["step"].startswith("distill") for s in q.quant_report.steps)  # the given data, not new
