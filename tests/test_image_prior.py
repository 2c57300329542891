"""DeepInversion's image prior in the ZeroQ generator (pyquant.distill.image_prior): total variation against
a naive loop, jitter/flip is a roll/flip of the batch, and zeroq(tv_weight=) makes smoother images."""

import pytest
import torch

import pyquant
from pyquant.distill.image_prior import jitter_and_flip, total_variation

import nets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_total_variation_against_a_naive_loop():
    x = torch.randn(3, 2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    per_sample = []
    for n in range(3):
        dh = sum((x[n, c, i + 1, j] - x[n, c, i, j]) ** 2 for c in range(2) for i in range(4) for j in range(4)) / (2 * 4 * 4)
        dw = sum((x[n, c, i, j + 1] - x[n, c, i, j]) ** 2 for c in range(2) for i in range(5) for j in range(3)) / (2 * 5 * 3)
        per_sample.append(dh + dw)
    torch.testing.assert_close(total_variation(x), torch.stack(per_sample).mean())


def test_jitter_and_flip_is_a_roll_and_maybe_a_flip():
    x = torch.randn(2, 3, 6, 6)
    g = torch.Generator().manual_seed(4)
    for _ in range(10):
        y = jitter_and_flip(x, 2, g)
        matches = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in (False, True)
                   if torch.equal(y, (lambda r: r.flip(3) if f else r)(torch.roll(x, (dy, dx), (2, 3))))]
        assert matches


def test_zeroq_tv_weight_smooths_the_images_and_bad_values_are_named():
    torch.manual_seed(0)
    m = nets.resnet8()
    kw = dict(batch_size=4, iterations=30, seed=0, progress=False)
    plain = pyquant.distill.zeroq(m, 4, (3, 16, 16), **kw)
    smooth = pyquant.distill.zeroq(m, 4, (3, 16, 16), tv_weight=5.0, jitter=1, **kw)
    assert total_variation(smooth) < 0.5 * total_variation(plain)
    assert torch.equal(smooth, pyquant.distill.zeroq(m, 4, (3, 16, 16), tv_weight=5.0, jitter=1, **kw))
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="tv_weight"):
            pyquant.distill.zeroq(m, 4, (3, 16, 16), tv_weight=bad, **kw)
    with pytest.raises(ValueError, match="jitter"):
        pyquant.distill.zeroq(m, 4, (3, 16, 16), jitter=-1, **kw)
