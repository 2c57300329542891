"""Histogram cases every CPU variant must count exactly as the reference (imported by test_histogram.py,
in this process and in one process per lower variant): ReLU-like data with a spike of exact zeros, with
the bin of 0 at the centre, at an edge and outside the range; lengths that end inside a vector, inside the
first stage and inside a later one (the kernel counts one stage while it bins the next); reduced precision."""

import torch

from pyquant import ops, reference


def check_histogram_cases():
    g = torch.Generator().manual_seed(0)
    relu = torch.randn(10007, generator=g).relu_()  # about half exact zeros
    mixed = torch.randn(4099, generator=g)
    mixed[::3] = 0.0
    cases = [
        (relu, 4096, -3.5, 3.5),     # two-sided range: 0 in the centre bin
        (relu, 2048, 0.0, 4.0),      # 0 in bin 0, with the values clamped there (none here)
        (relu, 7, 0.5, 2.0),         # 0 outside the range: clamped into bin 0 with the negatives
        (mixed, 33, -2.0, 1.0),      # 0 in an inner bin that also holds non-zero values
        (mixed, 16, -3.0, -0.5),     # 0 above the range: clamped into the last bin
        (torch.zeros(1000), 64, -1.0, 1.0),
        (torch.zeros(13), 5, 0.0, 1.0),
        (relu[:9], 4096, -3.5, 3.5),
        (relu[:512], 100, -1.0, 3.0),  # exactly two stages
        (relu[:300], 100, -1.0, 3.0),  # a second stage of 44
    ]
    for x, bins, lo, hi in cases:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            xd = x.to(dtype)
            got = ops.histogram(xd, bins, lo, hi)
            assert torch.equal(got, reference.histogram(xd.float(), bins, lo, hi)), (x.numel(), bins, lo, hi, dtype)
    # Per channel: channels of ReLU outputs in NCHW and channels_last, range [0, max] per channel.
    act = torch.randn(3, 8, 11, 13, generator=g).relu_()
    act[:, 2] = 0.0
    lo_c, hi_c = torch.zeros(8), act.amax(dim=(0, 2, 3)).clamp(min=1e-3)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = ops.histogram(act.contiguous(memory_format=layout), 100, lo_c, hi_c, axis=1)
        assert torch.equal(got, reference.histogram(act, 100, lo_c, hi_c, 1)), layout
    # A NaN in a later stage is still reported.
    bad = relu.clone()
    bad[5000] = float("nan")
    try:
        ops.histogram(bad, 4096, -3.5, 3.5)
    except ValueError as e:
        assert "finite" in str(e)
    else:
        raise AssertionError("a NaN among zeros was not reported")
