"""Plain-PyTorch implementations of every pyquant op: the tests' oracle and the benchmarks' eager
baseline. They follow the kernels' contracts operation by operation, with no C++ involved."""

from pyquant.reference.fake_quant import (
    fake_quant,
    fake_quant_mask,
    lsq_backward,
    pact,
    pact_backward,
)

__all__ = ["fake_quant", "fake_quant_mask", "lsq_backward", "pact", "pact_backward"]
