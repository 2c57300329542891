"""Plain-PyTorch implementations of every pyquant op: the tests' oracle and the benchmarks' eager
baseline. They follow the kernels' contracts operation by operation, with no C++ involved."""

from pyquant.reference.fake_quant import (
    fake_quant,
    fake_quant_lsq_qdrop,
    fake_quant_mask,
    lsq_backward,
    lsq_qdrop_backward,
    pact,
    pact_backward,
    qdrop_keep_fp,
    qdrop_keep_fp_at,
    qdrop_threshold,
    qdrop_u24_at,
)

from pyquant.reference.entropy import kl_divergences_loop
from pyquant.reference.histogram import histogram
from pyquant.reference.range_search import (
    candidate_params,
    grid_search_eager,
    grid_search_eager_chunked,
    range_search,
)
from pyquant.reference import int8
from pyquant.reference.bn_stat_loss import bn_stat_loss, gdfq_bns_loss, zeroq_own_loss
from pyquant.reference.squant import squant_round

__all__ = [
    "fake_quant",
    "fake_quant_mask",
    "lsq_backward",
    "fake_quant_lsq_qdrop",
    "lsq_qdrop_backward",
    "qdrop_keep_fp",
    "qdrop_keep_fp_at",
    "qdrop_threshold",
    "qdrop_u24_at",
    "pact",
    "pact_backward",
    "range_search",
    "candidate_params",
    "grid_search_eager",
    "grid_search_eager_chunked",
    "histogram",
    "kl_divergences_loop",
    "bn_stat_loss",
    "zeroq_own_loss",
    "gdfq_bns_loss",
    "squant_round",
    "int8",
]
