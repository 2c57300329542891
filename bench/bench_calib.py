"""Calibration benchmarks (pytest-benchmark), each op against a named baseline in the same run.

    python -m pytest bench/bench_calib.py --benchmark-only --benchmark-json=/tmp/bench_calib.json
    python bench/report_calib.py /tmp/bench_calib.json

Targets (issue 3): range_search >= 30x the best eager grid search (512x4608 per channel, 100
candidates, 4 and 8 bit, same choice); histogram + entropy >= 5x HistogramObserver forward +
calculate_qparams on 64x256x28x28; per-channel histogram throughput in GB/s next to a plain copy.
"""

import pytest
import torch

from pyquant import calib, ops, reference

GRIDS = {8: (-128, 127), 4: (-8, 7)}
ROUNDS_SLOW = 3


@pytest.fixture(scope="module")
def weight():
    return torch.randn(512, 4608, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def activation():
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 256, 28, 28, generator=g).relu_()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("impl", ["pyquant", "eager_loop", "eager_chunked"])
def test_range_search(benchmark, weight, bits, impl):
    qmin, qmax = GRIDS[bits]
    benchmark.group = f"range_search 512x4608 per-channel {bits}-bit K=100"
    if impl == "pyquant":
        scale = benchmark(lambda: ops.range_search(weight, qmin, qmax, axis=0, num_candidates=100)[0])
    else:
        fn = reference.grid_search_eager if impl == "eager_loop" else reference.grid_search_eager_chunked
        scale = benchmark.pedantic(lambda: fn(weight, qmin, qmax, 0, True, 100)[0], rounds=ROUNDS_SLOW, iterations=1)
    # Same choice as the oracle's rule (checked on the fp32 eager errors; the unit tests compare with
    # the float64 brute force).
    expect = ops.range_search(weight, qmin, qmax, axis=0, num_candidates=100)[0]
    agree = (scale == expect).float().mean().item()
    benchmark.extra_info["same_choice_fraction"] = agree
    assert agree >= 0.99


def _pyquant_entropy(x):
    est = calib.EntropyEstimator(bins=2048)
    est.observe(x)
    return est.qparams(0, 255)


def _histogram_observer(x):
    obs = torch.ao.quantization.HistogramObserver(bins=2048, dtype=torch.quint8)
    obs(x)
    return obs.calculate_qparams()


@pytest.mark.parametrize("impl", ["pyquant", "HistogramObserver"])
def test_histogram_entropy(benchmark, activation, impl):
    benchmark.group = "histogram + calibration 64x256x28x28 (per tensor)"
    if impl == "pyquant":
        benchmark.pedantic(lambda: _pyquant_entropy(activation), rounds=5, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(lambda: _histogram_observer(activation), rounds=ROUNDS_SLOW, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["pyquant_histogram_only", "pyquant_entropy_search_only", "read_pass_aminmax"])
def test_histogram_entropy_parts(benchmark, activation, impl):
    """The estimator's passes apart: its range pass is ``torch.aminmax`` (``read_pass_aminmax``, also the cost of
    reading the tensor once: the memory bound of a pass), then the counting pass over the range it found
    (``pyquant_histogram_only``), then the KL search on the counts."""
    benchmark.group = "histogram + calibration 64x256x28x28 (per tensor)"
    benchmark.extra_info["bytes"] = activation.numel() * activation.element_size()
    if impl == "pyquant_histogram_only":
        amax = activation.abs().amax().reshape(1)
        benchmark.pedantic(lambda: ops.histogram(activation, 4096, -amax, amax), rounds=5, iterations=1,
                           warmup_rounds=1)
    elif impl == "read_pass_aminmax":
        benchmark.pedantic(lambda: torch.aminmax(activation), rounds=5, iterations=1, warmup_rounds=1)
    else:
        est = calib.EntropyEstimator(bins=2048).observe(activation)
        benchmark.pedantic(lambda: est.qparams(0, 255), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["pyquant_per_channel", "torch_histc_loop", "clone"])
def test_histogram_per_channel_throughput(benchmark, activation, impl):
    benchmark.group = "per-channel histogram 64x256x28x28 axis=1, 2048 bins"
    lo = torch.zeros(256)
    hi = activation.amax(dim=(0, 2, 3))
    benchmark.extra_info["bytes"] = activation.numel() * activation.element_size()
    if impl == "pyquant_per_channel":
        benchmark.pedantic(lambda: ops.histogram(activation, 2048, lo, hi, axis=1), rounds=5, iterations=1,
                           warmup_rounds=1)
    elif impl == "clone":
        benchmark.pedantic(lambda: activation.clone(), rounds=5, iterations=1, warmup_rounds=1)
    else:
        def loop():
            rows = activation.transpose(0, 1)
            return [torch.histc(rows[c], 2048, 0.0, float(hi[c])) for c in range(256)]
        benchmark.pedantic(loop, rounds=ROUNDS_SLOW, iterations=1)
