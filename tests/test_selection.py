"""Per-model selection (pyquant.selection, Recipe.select_among): the signal, the choice, the contract."""

import math

import pytest
import torch
from torch import nn

import pyquant
from pyquant.selection import output_divergence, select

from nets import bn_stats_from_data, mobilenet, resnet8

from test_recipes import FAST  # the same tiny settings

pytestmark = pytest.mark.usefixtures("one_thread")


def _kl_float64_loop(p_logits, q_logits):
    total = 0.0
    for pl, ql in zip(p_logits.double(), q_logits.double()):
        p = torch.softmax(pl, 0)
        q = torch.softmax(ql, 0)
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p.tolist(), q.tolist()))
    return total / p_logits.shape[0]


def test_output_divergence_is_the_kl_of_the_outputs_and_zero_for_the_same_model():
    torch.manual_seed(0)
    fp, q = nn.Linear(6, 5), nn.Linear(6, 5)
    x = torch.randn(37, 6)
    with torch.no_grad():
        expected = _kl_float64_loop(fp(x), q(x))
    assert output_divergence(fp, q, x, batch_size=10) == pytest.approx(expected, rel=1e-9)
    assert output_divergence(fp, fp, x) == 0.0


def test_output_divergence_of_non_class_outputs_is_relative_noise_power():
    torch.manual_seed(0)
    fp, q = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 3, 1)
    x = torch.randn(4, 2, 5, 5)
    with torch.no_grad():
        ref, out = fp(x).double(), q(x).double()
    assert output_divergence(fp, q, x) == pytest.approx(((ref - out) ** 2).sum().item() / (ref ** 2).sum().item())


def test_select_keeps_the_closest_candidate_ties_keep_the_first_and_nan_never_wins():
    torch.manual_seed(0)
    fp = nn.Linear(4, 3)
    near = nn.Linear(4, 3)
    near.load_state_dict(fp.state_dict())
    with torch.no_grad():
        near.bias.add_(0.01)
    far = nn.Linear(4, 3)
    broken = nn.Linear(4, 3)
    with torch.no_grad():
        broken.weight.fill_(float("nan"))
    x = torch.randn(16, 4)
    kept, sel = select(fp, [("broken", lambda: broken), ("far", lambda: far), ("near", lambda: near),
                            ("near_again", lambda: near)], x, progress=False)
    assert kept is near and sel.chosen == "near"
    assert [c["recipe"] for c in sel.candidates] == ["broken", "far", "near", "near_again"]
    assert sel.candidates[0]["divergence"] == math.inf
    assert sel.holdout_samples == 16 and "near" in str(sel)


def test_selecting_recipe_returns_exactly_the_chosen_candidates_model():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = pyquant.distill.zeroq(model, 16, (3, 16, 16), batch_size=8, iterations=3, progress=False)
    calib, holdout = data[:12], data[12:]
    # reconstruction off: the selection alone (test_recipes checks the reconstruction of the chosen candidate)
    recipe = pyquant.RECIPES["best"].replace(select_among=("zeroq", "dfq", "squant"), reconstruct=None)
    q = pyquant.quantize(model, recipe, w_bits=4, a_bits=4, input_shape=(3, 16, 16), data=calib, holdout=holdout,
                         progress=False, **FAST)
    sel = q.quant_report.selection
    assert [c["recipe"] for c in sel.candidates] == ["best", "zeroq", "dfq", "squant"]
    divergences = {c["recipe"]: c["divergence"] for c in sel.candidates}
    assert sel.chosen == min(divergences, key=divergences.get)
    assert q.quant_report.recipe == f"best -> {sel.chosen}"
    # the kept model is the candidate built alone on the same data
    alone = pyquant.quantize(model, sel.chosen if sel.chosen != "best" else recipe.replace(select_among=()),
                             w_bits=4, a_bits=4, input_shape=(3, 16, 16), data=calib, progress=False, **FAST)
    x = torch.randn(8, 3, 16, 16)
    torch.testing.assert_close(q(x), alone(x), rtol=0, atol=0)
    from pyquant.selection import divergence

    assert recipe.select_signal == "bn_mismatch"  # best's
    assert divergence("bn_mismatch", model, q, holdout) == pytest.approx(divergences[sel.chosen], rel=1e-12)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_selecting_recipe_generates_its_held_out_samples_and_passes_the_convention_on(capsys):
    model = bn_stats_from_data(mobilenet(), torch.randn(256, 3, 16, 16))
    recipe = pyquant.RECIPES["best"].replace(select_among=("dfq",), select_holdout=4)
    q = pyquant.quantize(model, recipe, w_bits=6, a_bits=6, input_shape=(3, 16, 16), first_last_bits=8, **FAST)
    out = capsys.readouterr().err  # progress goes to stderr (stdout stays clean for --json)
    assert "8 + 4 held-out samples" in out and out.count("[pyquant.quantize] select") == 2
    assert q.quant_report.selection.holdout_samples == 4
    bits = [r.weight_bits for r in q.quant_report.layers]
    assert bits[0] == bits[-1] == 8 and 6 in bits  # whichever candidate won, the convention holds


def test_given_data_without_holdout_splits_off_its_last_quarter():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data = torch.randn(20, 3, 16, 16)
    recipe = pyquant.RECIPES["zeroq"].replace(select_among=("dfq",), select_holdout=100)
    q = pyquant.quantize(model, recipe, w_bits=8, a_bits=8, input_shape=(3, 16, 16), data=data, progress=False)
    assert q.quant_report.selection.holdout_samples == 5


def test_best_selects_by_bn_mismatch_and_skips_candidates_that_build_the_same_model():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data = torch.randn(40, 3, 16, 16)
    kw = dict(input_shape=(3, 16, 16), data=data[:32], holdout=data[32:], progress=False)
    q8 = pyquant.quantize(model, "best", w_bits=8, a_bits=8, **kw)
    # at W8A8 best runs no ABN, so lp_squant would rebuild the same model
    assert [c["recipe"] for c in q8.quant_report.selection.candidates] == ["best", "zeroq", "dfq", "squant"]
    q4 = pyquant.quantize(model, "best", w_bits=4, a_bits=4, **kw)
    assert [c["recipe"] for c in q4.quant_report.selection.candidates] == ["best", "lp_squant", "zeroq", "dfq",
                                                                            "squant"]
    assert "BN-statistic" in q4.quant_report.selection.signal


def test_abn_gate_in_a_selecting_recipe_switches_the_signal_and_drops_the_duplicate_candidate(tmp_path):
    from pyquant.quant.report import write_report
    from pyquant.selection import divergence, noise_divergence

    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data = 2.5 * torch.randn(40, 3, 16, 16)  # misfit well above 0.05
    kw = dict(w_bits=4, a_bits=4, input_shape=(3, 16, 16), data=data[:32], holdout=data[32:], progress=False)
    recipe = pyquant.RECIPES["best"].replace(reconstruct=None, abn_max_data_misfit=0.05,
                                             misfit_select_signal="noise_kl")
    q = pyquant.quantize(model, recipe, **kw)
    sel = q.quant_report.selection
    assert not q.quant_report.abn_gate.ran
    assert "N(0,1)" in sel.signal and "held-out" not in str(sel)
    # without ABN best's own pipeline is lp_squant: built once
    assert [c["recipe"] for c in sel.candidates] == ["best", "zeroq", "dfq", "squant"]
    assert sel.chosen == min(sel.candidates, key=lambda c: c["divergence"])["recipe"]
    fp = model.eval()
    assert divergence("noise_kl", fp, q, data[32:]) == noise_divergence(fp, q, (3, 16, 16), seed=0)
    write_report(q.quant_report, str(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "ABN skipped" in md and f"selected {sel.chosen!r} by KL" in md
    # where the data fit, nothing changes: ABN runs and the usual signal judges
    q_fit = pyquant.quantize(model, recipe.replace(abn_max_data_misfit=10.0), **kw)
    assert q_fit.quant_report.abn_gate.ran and "BN-statistic" in q_fit.quant_report.selection.signal
    with pytest.raises(ValueError, match="misfit_select_signal"):
        pyquant.Recipe(misfit_select_signal="vibes")


def test_selection_settings_are_validated():
    with pytest.raises(TypeError, match="select_among"):
        pyquant.Recipe(select_among="dfq")
    with pytest.raises(ValueError, match="select_holdout"):
        pyquant.Recipe(select_holdout=0)
    model = bn_stats_from_data(resnet8(), torch.randn(64, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown recipe"):
        pyquant.quantize(model, "zeroq", input_shape=(3, 16, 16), select_among=("nope",), progress=False, **FAST)


def test_bn_mismatch_matches_a_naive_per_channel_loop_and_grows_with_the_shift():
    from pyquant.quant import quant_layers
    from pyquant.selection import bn_mismatch

    x = torch.randn(64, 3, 16, 16)
    model = bn_stats_from_data(resnet8(), x)
    q = pyquant.quantize(model, "zeroq", w_bits=8, a_bits=8, input_shape=(3, 16, 16), data=x[:32], progress=False)
    layers = {n: m for n, m in quant_layers(q).items() if n in q.bn_stats}
    outs = {}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o.double())) for n, m in layers.items()]
    with torch.no_grad():
        q(x)
    for h in handles:
        h.remove()
    per_layer = []
    for n, o in outs.items():
        st = q.bn_stats[n]
        terms = []
        for c in range(o.shape[1]):
            v = o[:, c].flatten()
            m, s = v.mean().item(), math.sqrt(((v - v.mean()) ** 2).mean().item())
            t_m, t_s = st.out_mean[c].item(), st.out_std[c].item()
            terms.append(((m - t_m) ** 2 + (s - t_s) ** 2) / max(t_s, 1e-8) ** 2)
        per_layer.append(sum(terms) / len(terms))
    assert bn_mismatch(q, x) == pytest.approx(sum(per_layer) / len(per_layer), rel=1e-9)
    assert bn_mismatch(q, x) < 0.05 < bn_mismatch(q, 3 * x)  # BN statistics were taken on x itself


def test_bn_mismatch_signal_selects_and_needs_bn_statistics():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    recipe = pyquant.RECIPES["zeroq"].replace(select_among=("dfq", "squant"), select_signal="bn_mismatch")
    q = pyquant.quantize(model, recipe, w_bits=4, a_bits=4, input_shape=(3, 16, 16), progress=False, **FAST)
    sel = q.quant_report.selection
    assert "BN-statistic" in sel.signal and len(sel.candidates) == 3
    assert sel.chosen == min(sel.candidates, key=lambda c: c["divergence"])["recipe"]
    with pytest.raises(ValueError, match="select_signal"):
        pyquant.Recipe(select_signal="vibes")
    with pytest.raises(ValueError, match="bn_stats"):
        from pyquant.selection import bn_mismatch

        bn_mismatch(nn.Sequential(nn.Linear(2, 2)), torch.randn(3, 2))
