"""Block reconstruction (pyquant.finetune): blocks found, the result runs on the int8 engine, resume equals
an uninterrupted run, no_grad callers work."""

import torch

import pyquant
from pyquant.finetune import blocks, reconstruct
from pyquant.int8 import convert

import nets


def _qm():
    m = nets.resnet8()
    return m, pyquant.quantize(m, "zeroq", w_bits=4, a_bits=4, input_shape=(3, 32, 32), num_samples=16,
                               data_iterations=2, progress=False)


def test_reconstruct_resume_equals_uninterrupted_and_int8_runs(tmp_path):
    m, qm = _qm()
    assert [b.name for b in blocks(qm)] == ["conv1", "layer1.0", "layer2.0", "layer3.0", "linear"]
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():  # any grad mode
        full = reconstruct(qm, x, iterations=4, batch_size=8, progress=False)
    # an interrupted run: checkpoint holds 2 finished blocks, resumed from there
    part = reconstruct(qm, x, iterations=4, batch_size=8, progress=False, checkpoint_dir=str(tmp_path))
    saved = torch.load(tmp_path / "reconstruct.pt", weights_only=True)
    assert saved["done"] == 5
    resumed = reconstruct(qm, x, iterations=4, batch_size=8, progress=False, checkpoint_dir=str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(full(x), part(x))
        torch.testing.assert_close(full(x), resumed(x))
        y = full(x)
        torch.testing.assert_close(convert(full)(x), y, atol=0.05 * float(y.abs().max()), rtol=0)
