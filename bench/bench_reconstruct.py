"""One block-reconstruction iteration (pyquant.finetune.reconstruct) with the fused LSQ + QDrop activation op against
the same iteration on eager activation quantizers, in the same run (issue 11: target >= 1.5x).

Run: PYQ_BENCH_THREADS=1 python -m pytest bench/bench_reconstruct.py --benchmark-only \
         --benchmark-json bench/results/bench_reconstruct.json
One benchmark = ``ITERATIONS`` iterations of ``_reconstruct_block`` on one residual block of a ResNet-32
(W4A4, batch 32; forward with QDrop, reconstruction loss + AdaRound regularizer, backward, Adam) from its
cached inputs. Each implementation replaces the whole activation function ``_quantize_activation`` (LSQ
fake-quant + QDrop):
  pyquant  ops.fake_quant_lsq_qdrop: LSQ and QDrop in one kernel, the mask hashed from a seed (as reconstruct runs)
  aten     torch._fake_quantize_learnable_per_tensor_affine (PyTorch's LSQ op), then eager QDrop
  eager    round/clamp with a straight-through round (pyquant.reference.learned.lsq), then eager QDrop
Eager QDrop: a torch.rand mask from the generator and ``x * keep + y * (1 - keep)`` (what reconstruct ran before
the fused op; torch.where's backward is 3x slower on CPU). The AdaRound weight path (rectified sigmoid, clamp,
step) is the same eager code in all three.
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


def with_eager_qdrop(lsq):
    """``_quantize_activation`` built from an LSQ function and QDrop in eager PyTorch."""
    def quantize_activation(x, scale, zero_point, qmin, qmax, grad_factor, drop_p, generator):
        y = lsq(x, scale, zero_point, qmin, qmax, None, grad_factor)
        if drop_p > 0:
            keep_fp = (torch.rand(x.shape, generator=generator, device=x.device) < drop_p).to(x.dtype)
            y = x * keep_fp + y * (1 - keep_fp)  # torch.where(keep_fp, x, y), exactly for finite values
        return y

    return quantize_activation


IMPLS = {"pyquant": rc._quantize_activation, "aten": with_eager_qdrop(aten_lsq), "eager": with_eager_qdrop(eager_lsq)}


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
    monkeypatch.setattr(rc, "_quantize_activation", IMPLS[impl])
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
