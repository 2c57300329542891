"""Plain-PyTorch implementations of every pyquant op: the tests' oracle and the benchmarks' eager
baseline. They follow the kernels' contracts operation by operation, with no C++ involved."""

from pyquant.reference.fake_quant import (
    fake_quant,
    fake_quant_mask,
    lsq_backward,
    pact,
    pact_backward,
)

from pyquant.reference.bn_stat_loss import bn_stat_loss, gdfq_bns_loss, zeroq_own_loss

__all__ = [
    "fake_quant",
    "fake_quant_mask",
    "lsq_backward",
    "pact",
    "pact_backward",
    "bn_stat_loss",
    "zeroq_own_loss",
    "gdfq_bns_loss",
]
