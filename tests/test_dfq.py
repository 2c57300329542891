"""Data-free transforms: CLE, high-bias absorption, bias correction, ABN, BN moments (pyquant.dfq)."""

import math

import pytest
import torch
from torch import nn

import pyquant
from pyquant import dfq
from pyquant.quant import (QuantSpec, fold_bn, prepare, quant_layers, quantize_weights, replace_relu6)

from nets import assert_close_rel, bn_stats_from_data, mobilenet, resnet8, sequential_cnn


pytestmark = pytest.mark.usefixtures("one_thread")


def _equalized(model):
    folded, stats = fold_bn(model)
    before = {k: v.clone() for k, v in folded.state_dict().items()}
    pairs, sweeps = dfq.cross_layer_equalization(folded, stats, tol=1e-7, max_iterations=200)
    return folded, stats, before, pairs, sweeps


@pytest.mark.parametrize("net", ["resnet8", "mobilenet"])
def test_cle_preserves_fp32_output_and_equalizes_ranges(net):
    model = resnet8() if net == "resnet8" else mobilenet()
    if net == "mobilenet":
        replace_relu6(model)
    x = torch.randn(4, 3, 16, 16)
    reference_folded, _ = fold_bn(model)
    folded, stats, before, pairs, sweeps = _equalized(model)
    assert pairs, "no equalization pair found"
    assert_close_rel(folded(x), reference_folded(x), 1e-5)
    changed = any(not torch.equal(v, folded.state_dict()[k]) for k, v in before.items())
    assert changed
    for a, b, _ in pairs:  # converged: each channel's range is the same in both layers
        w1, w2 = folded.get_submodule(a).weight, folded.get_submodule(b).weight
        groups = getattr(folded.get_submodule(b), "groups", 1)
        r1 = w1.reshape(w1.shape[0], -1).abs().amax(1)
        r2 = dfq.cle._input_channel_view(w2, groups).abs().amax(1)
        torch.testing.assert_close(r1, r2, rtol=1e-3, atol=1e-7)
    if net == "mobilenet":  # depthwise layers take part
        assert any(folded.get_submodule(b).groups > 1 for _, b, _ in pairs)


def test_cle_guards_zero_channels_and_relu6_breaks_pairs():
    model = mobilenet()
    folded, stats = fold_bn(model)
    assert not any(r for _, _, r in dfq.equalization_pairs(folded))  # ReLU6 is not positively homogeneous
    model2 = sequential_cnn()
    folded2, stats2 = fold_bn(model2)
    with torch.no_grad():
        folded2.get_submodule("0").weight[2].zero_()  # dead channel: r1 = 0
    x = torch.randn(3, 3, 16, 16)
    ref = folded2(x)
    dfq.cross_layer_equalization(folded2, stats2)
    out = folded2(x)
    assert torch.isfinite(out).all()
    assert_close_rel(out, ref, 1e-5)


def test_high_bias_absorption_preserves_output():
    model = sequential_cnn(padding=0)
    with torch.no_grad():  # large positive pre-activations: ReLU never clips, absorption is exact
        bn = model[1]
        bn.bias.fill_(5.0)
        bn.weight.fill_(0.1)
    folded, stats = fold_bn(model)
    x = 0.1 * torch.randn(4, 3, 16, 16)
    ref = folded(x)
    done = dfq.absorb_high_bias(folded, stats)
    assert "0" in done and done["0"] > 0
    assert_close_rel(folded(x), ref, 1e-5)
    assert float(stats["0"].out_mean.max()) < 5.0


def _layer_mean_error(q, ref, x, name):
    outs = []
    hooks = [m.get_submodule(name).register_forward_hook(lambda mod, a, o: outs.append(o.mean(dim=(0, 2, 3))))
             for m in (q, ref)]
    q(x)
    ref(x)
    for h in hooks:
        h.remove()
    return float((outs[0] - outs[1]).abs().mean())


@torch.no_grad()
def _output_mean_error(q, ref, x):
    return float((q(x).mean(0) - ref(x).mean(0)).abs().mean())


def test_analytic_bias_correction_reduces_mean_output_error():
    model = sequential_cnn(padding=0)
    x = torch.randn(256, 3, 16, 16)
    bn_stats_from_data(model, x)
    folded, stats = fold_bn(model)
    q = prepare(folded, QuantSpec(bits=3, axis=0), None)
    quantize_weights(q)
    before = _layer_mean_error(q, folded, x, "3")
    done = dfq.analytic_bias_correction(q, stats, (torch.zeros(1), torch.ones(1)))
    assert set(done) == {"0", "3"}  # the classifier reads max-pooled features: moments unknown
    assert _layer_mean_error(q, folded, x, "3") < 0.5 * before


@pytest.mark.parametrize("net", ["resnet8", "mobilenet"])
def test_empirical_bias_correction_reduces_mean_output_error(net):
    model = resnet8() if net == "resnet8" else mobilenet()
    folded, _ = fold_bn(model)
    q = prepare(folded, QuantSpec(bits=3, axis=0), None)
    quantize_weights(q)
    x = torch.randn(64, 3, 16, 16)
    before = _output_mean_error(q, folded, x)
    done = dfq.empirical_bias_correction(q, folded, x)
    assert len(done) == len(quant_layers(q))
    after = _output_mean_error(q, folded, x)
    assert after < 1e-4 * max(1.0, before) + 1e-5 or after < 0.05 * before


def test_abn_matches_bn_statistics_on_the_data():
    model = resnet8()
    folded, stats = fold_bn(model)
    q = prepare(folded, QuantSpec(bits=3, axis=0), None)
    quantize_weights(q)
    x = torch.randn(64, 3, 16, 16)
    dfq.adaptive_bn(q, stats, x)
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o))
             for n, m in quant_layers(q).items()]
    q(x)
    for h in hooks:
        h.remove()
    for name in ("conv1", "layer1.0.conv1", "layer2.0.conv2"):
        var, mean = torch.var_mean(outs[name], dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(mean, stats[name].out_mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(var.sqrt(), stats[name].out_std, atol=1e-4, rtol=1e-3)


def _layer_output_moments(model, names, x):
    outs = {}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda mod, a, o, n=n: outs.__setitem__(n, o.double())) for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {n: (o.mean(dim=(0, 2, 3)), o.var(dim=(0, 2, 3), unbiased=False).sqrt()) for n, o in outs.items()}


@pytest.mark.parametrize("bn_weight", [0.0, 0.5])
def test_abn_blended_target_between_fp32_data_statistics_and_bn(bn_weight):
    # BN statistics that the data do not reproduce (as with synthetic data): the two targets differ
    model = bn_stats_from_data(resnet8(), 1.7 * torch.randn(256, 3, 16, 16) + 0.3)
    folded, stats = fold_bn(model)
    q = prepare(folded, QuantSpec(bits=3, axis=0), None)
    quantize_weights(q)
    x = torch.randn(64, 3, 16, 16)
    names = ("conv1", "layer1.0.conv1", "layer2.0.conv2")
    fp = _layer_output_moments(folded, names, x)
    dfq.adaptive_bn(q, stats, x, bn_weight=bn_weight, fp_model=folded)
    got = _layer_output_moments(q, names, x)
    for name in names:
        beta, gamma = stats[name].out_mean.double(), stats[name].out_std.double()
        want_mean = (1 - bn_weight) * fp[name][0] + bn_weight * beta
        want_std = fp[name][1] ** (1 - bn_weight) * gamma ** bn_weight
        assert (want_std - gamma).abs().max() > 0.05, "the test needs targets that differ"
        torch.testing.assert_close(got[name][0], want_mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[name][1], want_std, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("bn_weight", [0.5, 1.0])
def test_abn_max_pull_bounds_the_move_towards_bn_statistics(bn_weight):
    # Targets as in the blended test, then each channel's move from the FP32 moments on the data clipped to
    # max_pull (log std ratio; mean shift in trained stds), computed here in float64 from the definitions.
    model = bn_stats_from_data(resnet8(), 1.7 * torch.randn(256, 3, 16, 16) + 0.3)
    folded, stats = fold_bn(model)
    x = torch.randn(64, 3, 16, 16)
    names = ("conv1", "layer1.0.conv1", "layer2.0.conv2")
    fp = _layer_output_moments(folded, names, x)
    max_pull = 0.05
    q = prepare(folded, QuantSpec(bits=3, axis=0), None)
    quantize_weights(q)
    dfq.adaptive_bn(q, stats, x, bn_weight=bn_weight, fp_model=folded, max_pull=max_pull)
    got = _layer_output_moments(q, names, x)
    clipped = 0
    for name in names:
        beta, gamma = stats[name].out_mean.double(), stats[name].out_std.double()
        mean_move = (bn_weight * (beta - fp[name][0])).clamp(-max_pull * gamma.abs(), max_pull * gamma.abs())
        log_move = (bn_weight * (gamma.log() - fp[name][1].log())).clamp(-max_pull, max_pull)
        clipped += int((log_move.abs() >= max_pull).sum())
        torch.testing.assert_close(got[name][0], fp[name][0] + mean_move, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[name][1], fp[name][1] * log_move.exp(), atol=1e-4, rtol=1e-3)
    assert clipped > 0, "the test needs channels whose pull is bounded"
    # A bound no channel reaches changes nothing.
    outs = []
    for kw in ({}, {"max_pull": 1e6}):
        q = prepare(folded, QuantSpec(bits=3, axis=0), None)
        quantize_weights(q)
        dfq.adaptive_bn(q, stats, x, bn_weight=bn_weight, fp_model=folded, **kw)
        outs.append(q(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for bad in (0.0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="max_pull"):
            dfq.adaptive_bn(q, stats, x, bn_weight=bn_weight, fp_model=folded, max_pull=bad)
    with pytest.raises(ValueError, match="fp_model"):
        dfq.adaptive_bn(q, stats, x, bn_weight=bn_weight, max_pull=max_pull)
    with pytest.raises(ValueError, match="abn_max_pull"):
        pyquant.Recipe(abn_max_pull=-0.1)


def test_data_misfit_is_the_median_layer_log_std_ratio_in_float64():
    from pyquant.dfq.abn import data_misfit

    model = bn_stats_from_data(resnet8(), 1.7 * torch.randn(256, 3, 16, 16) + 0.3)
    x = torch.randn(48, 3, 16, 16)
    inputs = {}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [m.register_forward_pre_hook(lambda mod, a: inputs.__setitem__(mod, a[0].double())) for m in bns]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    per_layer = []
    for m in bns:  # per channel: |log(population std of the input / sqrt(running_var + eps))|, mean over channels
        v = inputs[m]
        terms = [abs(math.log(v[:, c].flatten().std(unbiased=False).item()
                              / math.sqrt(m.running_var[c].item() + m.eps))) for c in range(v.shape[1])]
        per_layer.append(sum(terms) / len(terms))
    per_layer.sort()
    n = len(per_layer)
    want = per_layer[n // 2] if n % 2 else 0.5 * (per_layer[n // 2 - 1] + per_layer[n // 2])
    assert data_misfit(model, x, batch_size=10) == pytest.approx(want, rel=1e-6)  # batched: same statistics
    assert not model.training
    # the data the statistics were taken on fit them (up to BN's unbiased running variance); other data do not
    fit = bn_stats_from_data(resnet8(), x)
    assert data_misfit(fit, x) < 0.02 < 0.2 < data_misfit(fit, 3 * x)
    with pytest.raises(ValueError, match="BatchNorm"):
        data_misfit(nn.Sequential(nn.Conv2d(3, 4, 3)), x)
    with pytest.raises(ValueError, match="at least 2"):
        data_misfit(model, x[:1])


def test_abn_gate_skips_abn_on_data_that_do_not_fit_and_says_so():
    model = bn_stats_from_data(resnet8(), torch.randn(256, 3, 16, 16))
    data = 2.5 * torch.randn(24, 3, 16, 16)  # far from the statistics' data: misfit about log 2.5 in early layers
    kw = dict(w_bits=4, a_bits=4, input_shape=(3, 16, 16), data=data, progress=False)
    base = pyquant.RECIPES["best"].replace(select_among=(), reconstruct=None)
    closed = pyquant.quantize(model, base.replace(abn_max_data_misfit=0.05), **kw)
    gate = closed.quant_report.abn_gate
    assert not gate.ran and gate.misfit > 0.05 and not closed.recipe.abn
    assert "ABN skipped" in str(gate) and "abn_gate" in [s["step"] for s in closed.quant_report.steps]
    plain = pyquant.quantize(model, base.replace(abn=False), **kw)  # skipped = never asked for
    x = torch.randn(8, 3, 16, 16)
    torch.testing.assert_close(closed(x), plain(x), rtol=0, atol=0)
    opened = pyquant.quantize(model, base.replace(abn_max_data_misfit=10.0), **kw)
    assert opened.quant_report.abn_gate.ran and opened.recipe.abn
    ungated = pyquant.quantize(model, base.replace(abn_max_data_misfit=None), **kw)
    torch.testing.assert_close(opened(x), ungated(x), rtol=0, atol=0)
    assert ungated.quant_report.abn_gate is None
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="abn_max_data_misfit"):
            pyquant.Recipe(abn_max_data_misfit=bad)


def test_abn_bn_weight_one_is_the_paper_and_bad_weights_raise():
    model = resnet8()
    folded, stats = fold_bn(model)
    x = torch.randn(32, 3, 16, 16)
    outs = []
    for kw in ({}, {"bn_weight": 1.0, "fp_model": folded}):
        q = prepare(folded, QuantSpec(bits=4, axis=0), None)
        quantize_weights(q)
        dfq.adaptive_bn(q, stats, x, **kw)
        outs.append(q(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="fp_model"):
        dfq.adaptive_bn(q, stats, x, bn_weight=0.5)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="bn_weight"):
            dfq.adaptive_bn(q, stats, x, bn_weight=bad, fp_model=folded)


@pytest.mark.parametrize("upper", [math.inf, 6.0])
def test_clipped_gaussian_moments_match_monte_carlo(upper):
    mean = torch.tensor([-1.0, 0.0, 0.5, 3.0, 7.0])
    std = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.3])
    e, v = dfq.clipped_gaussian_moments(mean, std, upper)
    g = torch.Generator().manual_seed(0)
    z = mean.double() + std.double() * torch.randn(400_000, 5, generator=g, dtype=torch.float64)
    c = z.clamp(0, upper)
    torch.testing.assert_close(e.double(), c.mean(0), atol=0.01, rtol=0.01)
    torch.testing.assert_close(v.double(), c.var(0), atol=0.02, rtol=0.02)


def test_bn_moments_match_data_through_resnet():
    """Propagated input means of every layer track the measured ones on data that matches the BN stats."""
    model = resnet8()
    x = torch.randn(512, 3, 16, 16)
    bn_stats_from_data(model, x)
    folded, stats = fold_bn(model)
    means = dfq.expected_layer_inputs(folded, stats, (torch.zeros(1), torch.ones(1)))
    assert {"conv1", "layer1.0.conv1", "layer2.0.conv1", "linear"} <= set(means)
    ins = {}
    hooks = [folded.get_submodule(n).register_forward_hook(lambda mod, a, o, n=n: ins.__setitem__(n, a[0]))
             for n in means]
    folded(x)
    for h in hooks:
        h.remove()
    for n in ("layer1.0.conv1", "layer1.0.conv2"):  # ReLU of a Gaussian: close, not exact
        measured = ins[n].mean(dim=(0, 2, 3))
        assert float((means[n] - measured).abs().max()) < 0.1 * float(measured.abs().max()) + 0.05
