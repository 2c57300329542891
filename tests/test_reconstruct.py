"""Block reconstruction (pyquant.finetune): blocks found, a killed run resumed from its checkpoint equals the
uninterrupted one bit for bit, a NaN loss names its block and keeps the blocks before it, any grad mode works,
the output error against FP32 goes down, and the result runs on the int8 engine."""

import copy
import importlib

import pytest
import torch

import pyquant
from pyquant.finetune import ReconstructionError, blocks, reconstruct
from pyquant.int8 import convert

import nets
pytestmark = pytest.mark.usefixtures("one_thread")  # the machine is shared

rc = importlib.import_module("pyquant.finetune.reconstruct")  # the package exports the function of that name

SETTINGS = dict(iterations=4, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def calibrated():
    """ResNet-8 (random weights, non-trivial BN statistics) at W4A4 after calibration, with its data."""
    torch.manual_seed(0)
    m = nets.resnet8()
    qm = pyquant.quantize(m, "zeroq", w_bits=4, a_bits=4, input_shape=(3, 32, 32), num_samples=16,
                          data_iterations=2, progress=False)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return m, qm, x


def _states_equal(a, b, names=None):
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if names is None or any(k.startswith(n + ".") for n in names)]
    assert keys
    return all(torch.equal(sa[k], sb[k]) for k in keys)


def test_blocks_are_residual_blocks_and_single_layers(calibrated):
    _, qm, _ = calibrated
    assert [b.name for b in blocks(qm)] == ["conv1", "layer1.0", "layer2.0", "layer3.0", "linear"]


def test_killed_run_resumed_from_checkpoint_equals_uninterrupted(calibrated, tmp_path, monkeypatch):
    _, qm, x = calibrated
    full = reconstruct(qm, x, **SETTINGS)
    original = rc._reconstruct_block

    def killed_at_block_3(qm_, sub, block, *args):
        if block.index == 3:
            raise KeyboardInterrupt("killed")
        return original(qm_, sub, block, *args)

    monkeypatch.setattr(rc, "_reconstruct_block", killed_at_block_3)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(qm, x, checkpoint_dir=str(tmp_path), **SETTINGS)
    saved = torch.load(tmp_path / rc.CHECKPOINT, weights_only=True)
    assert saved["done"] == 3 and [e["block"] for e in saved["log"]] == ["conv1", "layer1.0", "layer2.0"]
    monkeypatch.setattr(rc, "_reconstruct_block", original)
    resumed = reconstruct(qm, x, checkpoint_dir=str(tmp_path), **SETTINGS)
    assert _states_equal(full, resumed)
    assert full.reconstruct_log == resumed.reconstruct_log
    with torch.no_grad():
        assert torch.equal(full(x), resumed(x))
    # the model passed in is not modified
    assert _states_equal(qm, calibrated[1]) and not hasattr(qm, "reconstruct_log")
    # another setting does not resume from this checkpoint
    with pytest.raises(ValueError, match="other settings"):
        reconstruct(qm, x, checkpoint_dir=str(tmp_path), **dict(SETTINGS, iterations=5))


def test_nan_loss_names_the_block_and_keeps_blocks_before(calibrated, monkeypatch):
    _, qm, x = calibrated
    full = reconstruct(qm, x, **SETTINGS)
    original = rc._reconstruct_block

    def inf_inputs_at_block_2(qm_, sub, block, x_q, *args):
        if block.index == 2:
            x_q = torch.full_like(x_q, float("inf"))
        return original(qm_, sub, block, x_q, *args)

    monkeypatch.setattr(rc, "_reconstruct_block", inf_inputs_at_block_2)
    failed = copy.deepcopy(qm)
    with pytest.raises(ReconstructionError, match=r"block 'layer2\.0'.*2 block\(s\) finished"):
        reconstruct(failed, x, inplace=True, **SETTINGS)
    units = blocks(qm)
    before = [l for b in units[:2] for l in b.layers] + [a for b in units[:2] for a in b.act_quantizers]
    after = [l for b in units[2:] for l in b.layers] + [a for b in units[2:] for a in b.act_quantizers]
    assert _states_equal(failed, full, before)  # the finished blocks are kept as reconstructed
    assert not _states_equal(qm, full, before)
    assert _states_equal(failed, qm, after)  # the failed block and the ones after it are as calibrated
    with torch.no_grad():
        assert torch.isfinite(failed(x)).all()


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_any_grad_mode_gives_the_same_result(calibrated, mode):
    _, qm, x = calibrated
    plain = reconstruct(qm, x, **SETTINGS)
    with mode():
        other = reconstruct(qm, x.clone(), **SETTINGS)
    assert _states_equal(plain, other)
    assert torch.is_grad_enabled()


def test_reconstruction_lowers_the_output_error_against_fp32(calibrated):
    m, qm, x = calibrated
    held_out = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    data = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = reconstruct(qm, data, iterations=60, batch_size=16, progress=False)
    with torch.no_grad():
        ref = m(held_out)
        before = (qm(held_out) - ref).pow(2).mean()
        after = (out(held_out) - ref).pow(2).mean()
    assert after < 0.8 * before, (float(before), float(after))
    first = [e["first_loss"] for e in out.reconstruct_log]
    final = [e["final_loss"] for e in out.reconstruct_log]
    assert sum(final) < sum(first)


def test_result_is_on_grid_and_runs_on_the_int8_engine(calibrated):
    _, qm, x = calibrated
    out = reconstruct(qm, x, **SETTINGS)
    for name, layer in pyquant.quant.graph.quant_layers(out).items():
        q = layer.weight_quantizer
        codes = layer.weight.detach() / q.scale.reshape([-1] + [1] * (layer.weight.dim() - 1))
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0, msg=name)
        assert codes.round().min() >= q.qmin and codes.round().max() <= q.qmax, name
    # Faithful code by code, as tests/test_int8_convert.py checks conversions: each int8 layer fed the fake-quant
    # network's codes is within one step of it, and end to end almost every code is equal. (Not the logits
    # within a fraction of their range: on this random-weight net a handful of single-step flips in the last
    # activations moves a logit by more than 5 % for some QDrop masks, seeds 3 and 4 of the former eager mask too.)
    q = convert(out)
    for name, r in pyquant.int8.compare_codes(out, q, x, layerwise=True).items():
        assert r["max_diff"] <= 1 and r["equal"] >= 0.99, (name, r)
    for name, r in pyquant.int8.compare_codes(out, q, x, layerwise=False).items():
        assert r["equal"] >= 0.95, (name, r)
    with torch.no_grad():
        assert q(x).shape == out(x).shape


def test_tied_quantizer_is_fp32_in_the_targets_and_shares_its_source_step(calibrated, monkeypatch):
    """The pooled features' quantizer is tied to the one before the pooling (same grid). The FP32 targets must
    be the FP32 network's (the last block's target is its output, not one computed on 4-bit pooled features),
    and in training the tied quantizer must use its source's learned step: the network trained is the one
    written back (resolve_ties gives it the source's final step)."""
    m, qm, x = calibrated
    targets, original = {}, rc._reconstruct_block

    def recording(qm_, sub, block, *args):
        entry, y_fp = original(qm_, sub, block, *args)
        targets[block.name] = y_fp
        return entry, y_fp

    monkeypatch.setattr(rc, "_reconstruct_block", recording)
    out = reconstruct(qm, x, **SETTINGS)
    with torch.no_grad():
        nets.assert_close_rel(targets["linear"], copy.deepcopy(m).eval()(x), 1e-4)
    last = blocks(qm)[-1]
    tied = {a: qm.get_submodule(a).tied_to for a in last.act_quantizers if qm.get_submodule(a).tied_to}
    assert tied and all(src in last.act_quantizers for src in tied.values())
    work = copy.deepcopy(qm)
    weights, acts = rc._swap(work, last, 0.0, None)
    for name, src in tied.items():
        assert acts[name].step_mult is acts[src].step_mult
    rc._restore(work, weights, acts, finalize=False)
    for name, src in tied.items():
        torch.testing.assert_close(out.get_submodule(name).scale, out.get_submodule(src).scale)


def test_targets_come_from_fp_model_not_from_a_changed_quantized_network(calibrated):
    _, qm, x = calibrated
    # fp_model equal to the network qm was prepared from: the same targets, so the same result bit for bit
    assert _states_equal(reconstruct(qm, x, fp_model=copy.deepcopy(qm), **SETTINGS), reconstruct(qm, x, **SETTINGS))
    # a step such as ABN shifts qm's float biases and weights: the bypassed network moves, fp_model's targets do not
    changed = copy.deepcopy(qm)
    with torch.no_grad():
        layer = changed.get_submodule("layer1.0.conv1")
        layer.bias.add_(0.5)
        layer.float_weight().mul_(1.5)
    block = [b for b in blocks(changed) if b.name == "layer1.0"][0]
    h = torch.randn(4, 16, 32, 32, generator=torch.Generator().manual_seed(2))
    want = rc._run_float(qm, None, block, h, 8)
    fp_layers = dict(qm.named_modules())
    assert torch.equal(rc._run_float(changed, None, block, h, 8, fp_layers), want)
    assert not torch.allclose(rc._run_float(changed, None, block, h, 8), want)
    with pytest.raises(ValueError, match="fp_model has no layer"):
        reconstruct(qm, x, fp_model=torch.nn.Linear(2, 2), **SETTINGS)


def test_start_rounding_current_starts_from_the_layers_own_rounding():
    """start_rounding='current': at iteration 0 the hard rounding is SQuant's (stored in the layer), 'nearest'
    is round-to-nearest; for a layer without a stored rounding the two are the same."""
    torch.manual_seed(0)
    qm = pyquant.quantize(nets.resnet8(), "squant", w_bits=4, a_bits=8, input_shape=(3, 32, 32), progress=False)
    flips = 0
    for name, m in pyquant.quant.graph.quant_layers(qm).items():
        s = m.weight_quantizer.scale.reshape(-1, *([1] * (m.weight.dim() - 1)))
        current = rc.AdaRoundWeight(m.weight_quantizer, m.float_weight(), m.weight)
        nearest = rc.AdaRoundWeight(m.weight_quantizer, m.float_weight())
        current.hard = nearest.hard = True
        with torch.no_grad():
            torch.testing.assert_close(current(m.weight), m.weight, rtol=0, atol=1e-6 * float(s.max()))
            expected = s * torch.clamp(torch.round(m.float_weight() / s), m.weight_quantizer.qmin, m.weight_quantizer.qmax)
            torch.testing.assert_close(nearest(m.weight), expected, rtol=0, atol=1e-6 * float(s.max()))
        flips += int((~torch.isclose(m.weight, expected)).sum())
    assert flips > 0  # SQuant changed some roundings, so the two starts differ
    with pytest.raises(ValueError, match="start_rounding"):
        reconstruct(qm, torch.zeros(2, 3, 32, 32), start_rounding="squant", **SETTINGS)


def test_views_are_the_data_with_its_flipped_and_shifted_copies(calibrated):
    """views=1 is the same reconstruction as passing the data and its view explicitly (same seed)."""
    from pyquant.finetune.augment import with_views

    _, qm, x = calibrated
    settings = dict(SETTINGS, seed=5)
    with_view = reconstruct(qm, x, views=1, **settings)
    explicit = reconstruct(qm, with_views(x, 1, seed=5), **settings)
    plain = reconstruct(qm, x, **settings)
    assert _states_equal(with_view, explicit) and not _states_equal(with_view, plain)
    with pytest.raises(ValueError, match="views"):
        reconstruct(qm, x, views=-1, **settings)
