"""KD fine-tuning (pyquant.finetune.kd_finetune): it brings the quantized network closer to its teacher on
held-out synthetic inputs, a resumed run equals the uninterrupted one bit for bit, a NaN loss stops with
the last good state, every grad mode gives the same result, the teacher is untouched and the result is an
ordinary fake-quant network that pyquant.int8.convert runs."""

import copy

import pytest
import torch

import pyquant
from pyquant import int8
from pyquant.finetune import KDError, kd_finetune
from pyquant.finetune import kd as kd_module
from pyquant.int8 import convert
from pyquant.selection import output_divergence

import nets

SETTINGS = dict(epochs=3, batch_size=8, lr=1e-3, lr_step=1e-3, progress=False)


def _setup():
    m = nets.resnet8()
    qm = pyquant.quantize(m, "zeroq", w_bits=4, a_bits=4, input_shape=(3, 32, 32), num_samples=16,
                          data_iterations=5, progress=False)
    x = pyquant.distill.zeroq(m, 24, (3, 32, 32), batch_size=24, iterations=5, seed=1, progress=False)
    return m, qm, x


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kd_lowers_kl_to_teacher_on_held_out_inputs():
    m, qm, x = _setup()
    held_out = pyquant.distill.zeroq(m, 32, (3, 32, 32), batch_size=32, iterations=5, seed=7, progress=False)
    out = kd_finetune(qm, m, x, **dict(SETTINGS, epochs=6))
    before, after = output_divergence(m.eval(), qm, held_out), output_divergence(m, out, held_out)
    assert after < 0.7 * before, (before, after)
    assert len(out.kd_log) == 6 and out.kd_log[-1]["kl"] < out.kd_log[0]["kl"]


def test_resume_after_kill_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch):
    m, qm, x = _setup()
    settings = dict(SETTINGS, augment=True, ce_weight=0.5, bn_weight=0.01, seed=3)
    full = kd_finetune(qm, m, x, **settings)
    calls = {"n": 0}
    real_loss = kd_module.kd_loss

    def killed_mid_epoch_2(*args, **kwargs):  # 3 batches per epoch: call 7 is epoch 2's first
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(kd_module, "kd_loss", killed_mid_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        kd_finetune(qm, m, x, checkpoint_dir=str(tmp_path), **settings)
    saved = torch.load(tmp_path / "kd.pt", weights_only=True)
    assert saved["epoch"] == 2
    monkeypatch.setattr(kd_module, "kd_loss", real_loss)
    resumed = kd_finetune(qm, m, x, checkpoint_dir=str(tmp_path), **settings)
    _assert_states_equal(_state(full), _state(resumed))
    def untimed(log):
        return [{k: v for k, v in e.items() if "seconds" not in k} for e in log]

    assert untimed(full.kd_log) == untimed(resumed.kd_log)
    with pytest.raises(ValueError, match="other settings"):
        kd_finetune(qm, m, x, checkpoint_dir=str(tmp_path), **dict(settings, lr=2e-3))


def test_nan_loss_stops_with_last_good_state(tmp_path):
    m, qm, x = _setup()

    def refreshed(epoch):  # a set refreshed each epoch; the second one is broken
        return x.roll(epoch, 0) if epoch != 1 else torch.full_like(x, float("nan"))

    target = copy.deepcopy(qm)
    with pytest.raises(KDError, match="epoch 1") as info:
        kd_finetune(target, m, refreshed, checkpoint_dir=str(tmp_path), inplace=True, **SETTINGS)
    assert info.value.model is target
    after_epoch_0 = torch.load(tmp_path / "kd.pt", weights_only=True)
    assert after_epoch_0["epoch"] == 1
    kept = _state(target)
    for k, v in after_epoch_0["model"].items():  # the learned steps were written back under the same names
        assert torch.equal(kept[k], v), k
    assert all(bool(torch.isfinite(v.float()).all()) for v in kept.values())
    with torch.no_grad():
        assert bool(torch.isfinite(target(x)).all())


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_any_grad_mode_gives_the_same_result(mode):
    m, qm, x = _setup()
    reference = kd_finetune(qm, m, x, **SETTINGS)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        out = kd_finetune(qm, m, x, **SETTINGS)
    _assert_states_equal(_state(reference), _state(out))


def test_teacher_and_student_input_unchanged():
    m, qm, x = _setup()
    m.train()  # a teacher in train mode would update its BN statistics if run as it is
    teacher_before, student_before = _state(m), _state(qm)
    kd_finetune(qm, m, x, **dict(SETTINGS, epochs=1, bn_weight=0.01))
    assert m.training
    _assert_states_equal(teacher_before, _state(m))
    _assert_states_equal(student_before, _state(qm))
    assert all(not p.requires_grad for p in qm.parameters() if p.dim() > 1)


def test_result_is_the_trained_network_and_int8_convert_runs():
    m, qm, x = _setup()
    out = kd_finetune(qm, m, x, **SETTINGS)
    assert not any(isinstance(mod, kd_module.LSQQuantizer) for mod in out.modules())
    # the same network with the learned LSQ stand-ins put back computes the same outputs
    relearned = copy.deepcopy(out)
    kd_module._Learned(relearned, True, True)
    with torch.no_grad():
        y = out(x)
        torch.testing.assert_close(relearned(x), y, rtol=0, atol=1e-5 * float(y.abs().max()))
    # The int8 engine runs the trained network: its codes match the fake-quant network's, with
    # test_int8_convert's bounds (layer by layer within one step, >= 99 % equal; end to end >= 95 % equal).
    # A logits bound is no test at 4 bits: one flipped code of the pooled features (a 1/15 step) moved the
    # logits by 13 % of their range on an AVX2-only EPYC, with every other code identical.
    q = convert(out)
    for layerwise, min_equal in ((True, 0.99), (False, 0.95)):
        for name, r in int8.compare_codes(out, q, x, layerwise=layerwise).items():
            assert r["equal"] >= min_equal and (r["max_diff"] <= 1 or not layerwise), (layerwise, name, r)


def test_bad_arguments_name_themselves():
    m, qm, x = _setup()
    with pytest.raises(TypeError, match="qm"):
        kd_finetune(m, m, x)
    with pytest.raises(TypeError, match="teacher"):
        kd_finetune(qm, "resnet", x)
    with pytest.raises(ValueError, match="data"):
        kd_finetune(qm, m, torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match="epochs"):
        kd_finetune(qm, m, x, epochs=0)
    with pytest.raises(ValueError, match="temperature"):
        kd_finetune(qm, m, x, temperature=0)
    with pytest.raises(ValueError, match="optimizer"):
        kd_finetune(qm, m, x, optimizer="lbfgs")
    plain = copy.deepcopy(qm)
    plain.bn_stats = {}
    with pytest.raises(ValueError, match="bn_weight"):
        kd_finetune(plain, m, x, bn_weight=1.0)


def test_kd_recipe_runs_calibration_then_finetuning():
    m = nets.resnet8()
    recipe = pyquant.RECIPES["kd"]
    assert recipe.steps[-2:] == ["finetune:kd", "report"]
    overrides = dict(num_samples=16, data_iterations=3, finetune=dict(recipe.finetune, epochs=2, batch_size=8))
    qm = pyquant.quantize(m, "kd", w_bits=4, a_bits=4, input_shape=(3, 32, 32), progress=False, **overrides)
    calibrated = pyquant.quantize(m, "kd", w_bits=4, a_bits=4, input_shape=(3, 32, 32), progress=False,
                                  **dict(overrides, finetune=None))
    assert [s["step"] for s in qm.quant_report.steps].count("finetune:kd") == 1 and len(qm.kd_log) == 2
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(qm(x), calibrated(x))
        assert bool(torch.isfinite(convert(qm)(x)).all())
