"""One block-reconstruction iteration (pyquant.finetune.reconstruct) with the fused LSQ activation op against
the same iteration on eager activation quantizers, in the same run (issue 11: target >= 1.5x).

Run: PYQ_BENCH_THREADS=1 python -m pytest bench/bench_reconstruct.py --benchmark-only \
         --benchmark-json bench/results/bench_reconstruct.json
One benchmark = ``ITERATIONS`` iterations of ``_reconstruct_block`` on one residual block of a ResNet-32
(W4A4, batch 32; forward with QDrop, reconstruction loss + AdaRound regularizer, backward, Adam) from its
cached inputs. Implementations of the activation quantizers' forward and backward:
  pyquant  ops.fake_quant_lsq (the fused kernel, as reconstruct runs)
  aten     torch._fake_quantize_learnable_per_tensor_affine (PyTorch's LSQ op)
  eager    round/clamp with a straight-through round (pyquant.reference.learned.lsq)
The AdaRound weight path (rectified sigmoid, clamp, step) is the same eager code in all three.
"""

import importlib

import pytest
import torch

import pyquant
from pyquant.models import resnet_cifar
from pyquant.reference.learned import lsq as eager_lsq

rc = importlib.import_module("pyquant.finetune.reconstruct")

ITERATIONS, BATCH = 20, 32
BLOCKS = ["layer1.1", "layer2.0", "layer3.1"]  # 16 channels at 32x32; stride 2 + projection; 64 at 8x8


def aten_lsq(x, scale, zero_point, qmin, qmax, axis, g):
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale.reshape(1), zero_point.reshape(1).float(),
                                                            qmin, qmax, g)


IMPLS = {"pyquant": None, "aten": aten_lsq, "eager": eager_lsq}


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    model = resnet_cifar(32)
    data = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    qm = pyquant.quantize(model, "lp_squant", w_bits=4, a_bits=4, input_shape=(3, 32, 32), data=data,
                          progress=False)
    units, inputs, x = {}, {}, data
    for unit in rc.blocks(qm):  # each block's input in the quantized network, as reconstruct caches it
        units[unit.name], inputs[unit.name] = unit, x
        x = rc._run(rc._block_module(qm, unit), x, BATCH)
    return qm, units, inputs


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("impl", list(IMPLS))
def test_reconstruct_iterations(benchmark, calibrated, monkeypatch, block, impl):
    qm, units, inputs = calibrated
    if IMPLS[impl] is not None:
        monkeypatch.setattr(rc.ops, "fake_quant_lsq", IMPLS[impl])
    unit, x = units[block], inputs[block]
    benchmark.group = f"reconstruct {block} x{ITERATIONS}"

    def run():  # every round starts from the calibrated block
        state = rc._state(qm)
        try:
            rc._reconstruct_block(qm, rc._block_module(qm, unit), unit, x, x, ITERATIONS, BATCH, 1e-3, 1e-3, 1e-3,
                                  1.0, (20.0, 2.0), 0.2, 0.5, True, True, 0)
        finally:
            rc._load_state(qm, state)

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
