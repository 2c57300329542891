"""Model surgery: BN folding, quantizer placement, modules, errors (pyquant.quant)."""

import pytest
import torch
from torch import nn

from pyquant import ops, reference
from pyquant.calib import MinMaxEstimator
from pyquant.quant import (FakeQuantizer, QuantConv2d, QuantLinear, QuantSpec, act_quantizers, calibrate_activations,
                           fold_bn, prepare, quant_layers, quantize_weights, sqnr_db)

from nets import assert_close_rel, mobilenet, no_bn_cnn, resnet8, sequential_cnn, torchvision_style_resnet

NETS = {"resnet8": resnet8, "mobilenet": mobilenet, "sequential": sequential_cnn,
        "torchvision": torchvision_style_resnet}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("net", sorted(NETS))
def test_fold_bn_preserves_output_and_keeps_stats(net):
    model = NETS[net]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 16, 16)
    folded, stats = fold_bn(model)
    assert_close_rel(folded(x), model(x), 1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(stats) == n_bn
    for name, st in stats.items():
        bn = model.get_submodule(st.bn)
        torch.testing.assert_close(st.running_mean, bn.running_mean)
        torch.testing.assert_close(st.out_mean, bn.bias.detach())
    for k, v in model.state_dict().items():  # the input model is untouched
        torch.testing.assert_close(v, before[k])


def test_fake_quantizer_matches_reference():
    x = torch.randn(6, 5, 4)
    q = FakeQuantizer(QuantSpec(bits=4, signed=True, symmetric=False, axis=1)).calibrate(x)
    scale, zp = MinMaxEstimator(axis=1, symmetric=False).observe(x).qparams(-8, 7)
    torch.testing.assert_close(q.scale, scale)
    torch.testing.assert_close(q.zero_point, zp)
    expected = reference.fake_quant(x, scale, zp, -8, 7, axis=1)
    torch.testing.assert_close(q(x), expected, rtol=0, atol=0)
    assert q.zero_point.dtype == torch.int32 and (q.qmin, q.qmax, q.axis) == (-8, 7, 1)
    q.enabled = False
    assert q(x) is x


def test_quant_spec_validation():
    assert (QuantSpec(bits=4, signed=False).qmin, QuantSpec(bits=4, signed=False).qmax) == (0, 15)
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=9)
    with pytest.raises(ValueError, match="estimator"):
        QuantSpec(estimator="magic")


def _prepared(model, bits=8):
    folded, _ = fold_bn(model)
    q = prepare(folded, QuantSpec(bits=bits, axis=0), QuantSpec(bits=bits, signed=False, symmetric=False))
    return folded, q


def test_resnet_placement_policy():
    model = resnet8()
    _, q = _prepared(model)
    sites = q.act_quantizer_sites
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    # network input + every ReLU + the pooled features before the classifier; adds feed ReLUs only
    assert len(sites) == 1 + len(relus) + 1
    assert sites["aq_x"] == "x"
    assert any(v.startswith("flatten") for v in sites.values())
    layers = quant_layers(q)
    assert len(layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    for name, m in layers.items():  # no float islands: every weight layer reads a quantized tensor
        assert m.input_quantizer_name in sites, name
    assert q.get_submodule("conv1").input_quantizer_name == "aq_x"
    assert act_quantizers(q)["aq_relu"].qmin == 0  # ReLU outputs: unsigned grid


def test_torchvision_style_resnet_placement():
    # one ReLU module called twice per block, projection shortcuts, max-pool stem, torch.flatten
    model = torchvision_style_resnet()
    _, q = _prepared(model)
    sites = q.act_quantizer_sites
    relu_calls = [n for n in q.graph.nodes if n.op == "call_module" and isinstance(
        q.get_submodule(n.target), nn.ReLU)]
    assert len(relu_calls) == 1 + 2 * 2 + 3  # stem, 2 per BasicBlock, 3 in the Bottleneck
    # every ReLU call has its own quantizer, plus the input and the pooled features
    assert len(sites) == 1 + len(relu_calls) + 1
    for name, m in quant_layers(q).items():  # the downsample convs read the block input's grid
        assert m.input_quantizer_name in sites, name
    assert q.get_submodule("layer1.1.downsample.0").input_quantizer_name == \
        q.get_submodule("layer1.1.conv1").input_quantizer_name
    assert q.get_submodule("layer1.0.conv1").input_quantizer_name != "aq_x"  # max-pool reads the stem ReLU's grid


def test_mobilenet_placement_quantizes_adds_and_linear_bottlenecks():
    _, q = _prepared(mobilenet())
    sites = q.act_quantizer_sites
    assert any(v.startswith("add") for v in sites.values())
    for name, m in quant_layers(q).items():
        assert m.input_quantizer_name is not None, name
    dw = [m for m in quant_layers(q).values() if isinstance(m, QuantConv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels for m in dw)


@pytest.mark.parametrize("net", sorted(NETS))
def test_8bit_model_is_close_and_report_fields(net):
    model = NETS[net]()
    folded, q = _prepared(model, 8)
    x = torch.randn(32, 3, 16, 16)
    quantize_weights(q)
    calibrate_activations(q, x)
    assert sqnr_db(folded(x), q(x)) > 25.0
    folded4, q4 = _prepared(model, 4)
    quantize_weights(q4)
    calibrate_activations(q4, x)
    assert sqnr_db(folded(x), q4(x)) < sqnr_db(folded(x), q(x))  # fewer bits, more noise


def test_first_last_bits():
    folded, _ = fold_bn(resnet8())
    q = prepare(folded, QuantSpec(bits=4, axis=0), QuantSpec(bits=4, signed=False), first_last_bits=8)
    layers = quant_layers(q)
    assert layers["conv1"].weight_quantizer.bits == 8 and layers["linear"].weight_quantizer.bits == 8
    assert layers["layer1.0.conv1"].weight_quantizer.bits == 4
    aqs = act_quantizers(q)
    assert aqs[layers["conv1"].input_quantizer_name].bits == 8
    assert aqs[layers["linear"].input_quantizer_name].bits == 8
    assert aqs[layers["layer1.0.conv2"].input_quantizer_name].bits == 4


def test_input_bits():
    folded, _ = fold_bn(resnet8())
    q = prepare(folded, QuantSpec(bits=4, axis=0), QuantSpec(bits=4, signed=False), input_bits=8)
    layers = quant_layers(q)
    aqs = act_quantizers(q)
    assert aqs[layers["conv1"].input_quantizer_name].bits == 8  # the network input only
    assert all(layers[n].weight_quantizer.bits == 4 for n in ("conv1", "linear"))
    assert aqs[layers["linear"].input_quantizer_name].bits == 4
    assert aqs[layers["layer1.0.conv2"].input_quantizer_name].bits == 4
    both = prepare(folded, QuantSpec(bits=4, axis=0), QuantSpec(bits=4, signed=False), first_last_bits=6,
                   input_bits=8)  # input_bits wins over first_last_bits at the input, not at the last layer
    assert act_quantizers(both)[quant_layers(both)["conv1"].input_quantizer_name].bits == 8
    assert act_quantizers(both)[quant_layers(both)["linear"].input_quantizer_name].bits == 6


def test_quant_modules_compute_with_quantized_weight():
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    qc = QuantConv2d(conv, QuantSpec(bits=4))
    qc.calibrate_weight()
    x = torch.randn(2, 4, 5, 5)
    wq = ops.fake_quant(conv.weight.detach(), qc.weight_quantizer.scale, qc.weight_quantizer.zero_point, -8, 7, 0)
    torch.testing.assert_close(qc(x), nn.functional.conv2d(x, wq, conv.bias, 1, 1, 1, 2))
    lin = nn.Linear(5, 3)
    ql = QuantLinear(lin, QuantSpec(bits=8))
    ql.calibrate_weight()
    assert sqnr_db(lin(x[:, 0, 0]), ql(x[:, 0, 0])) > 30


class _Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return x
        return -x


def test_untraceable_module_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.add_module("gate", _Gate())
    with pytest.raises(ValueError, match="gate.*_Gate"):
        fold_bn(model)


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LayerNorm(4 * 14 * 14))
    with pytest.raises(ValueError, match="'4' \\(LayerNorm\\)"):
        fold_bn(model)


def test_fold_without_bn_is_identity():
    model = no_bn_cnn()
    folded, stats = fold_bn(model)
    x = torch.randn(2, 3, 8, 8)
    assert stats == {}
    torch.testing.assert_close(folded(x), model(x))


@pytest.mark.parametrize("depth", [20, 56])
def test_resnet20_and_56_structure(depth):
    import pyquant

    model = pyquant.models.resnet_cifar(depth)
    folded, stats = fold_bn(model)
    assert len(stats) == depth - 1  # every conv has its BN; the classifier has none
    q = prepare(folded, QuantSpec(bits=4, axis=0), QuantSpec(bits=4, signed=False))
    n_relu = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert len(q.act_quantizer_sites) == 1 + n_relu + 1
    assert len(quant_layers(q)) == depth


def test_forward_hooks_are_removed_after_the_block_and_on_error():
    from pyquant.quant.hooks import forward_hooks

    layer = nn.Linear(3, 2)
    seen = []
    with forward_hooks([(layer, lambda m, a, out: seen.append(out.shape))]):
        layer(torch.zeros(4, 3))
    layer(torch.zeros(5, 3))
    assert seen == [torch.Size([4, 2])] and not layer._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([(layer, lambda m, a, out: out * 2)]):
            raise RuntimeError("boom")
    assert not layer._forward_hooks
    torch.testing.assert_close(layer(torch.ones(1, 3)), nn.functional.linear(torch.ones(1, 3), layer.weight, layer.bias))
