"""Augmented views for training on synthetic data (pyquant.finetune.augment): every view is a flip and/or a
shift of its own sample (checked against a naive per-pixel loop), views are deterministic under the seed, and the
low-pass filter keeps what is below its cut-off (reconstruct(views=): tests/test_reconstruct.py)."""

import pytest
import torch

from pyquant.finetune.augment import default_pad, flip_and_shift, with_views

pytestmark = pytest.mark.usefixtures("one_thread")


def _naive_view(img, flip, dy, dx, pad):
    """The view by definition: out[c, i, j] = padded(flipped img)[c, i + dy, j + dx], zero outside."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    for i in range(h):
        for j in range(w):
            y, x = i + dy - pad, j + dx - pad
            if 0 <= y < h and 0 <= x < w:
                out[:, i, j] = img[:, y, w - 1 - x] if flip else img[:, y, x]
    return out


def test_each_view_is_a_flip_and_shift_of_its_own_sample():
    x = torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    views = flip_and_shift(x, torch.Generator().manual_seed(3), pad=2)
    assert views.shape == x.shape
    for n in range(6):
        candidates = [(f, dy, dx) for f in (False, True) for dy in range(5) for dx in range(5)
                      if torch.equal(views[n], _naive_view(x[n], f, dy, dx, 2))]
        assert candidates, f"view {n} is no flip/shift of sample {n}"


def test_views_are_deterministic_under_the_seed_and_differ_across_seeds():
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b, c = with_views(x, 3, seed=1), with_views(x, 3, seed=1), with_views(x, 3, seed=2)
    assert a.shape == (64, 3, 32, 32) and torch.equal(a[:16], x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert default_pad(32) == 4 and default_pad(224) == 28 and default_pad(4) == 1


@pytest.mark.parametrize("views", [-1, 1.5, True, "2"])
def test_bad_view_counts_name_the_argument(views):
    with pytest.raises(ValueError, match="views"):
        with_views(torch.zeros(2, 1, 4, 4), views, seed=0)


def test_flip_and_shift_needs_images():
    with pytest.raises(ValueError, match="N, C, H, W"):
        flip_and_shift(torch.zeros(4, 10), torch.Generator())


def test_low_pass_keeps_low_frequencies_and_removes_high_ones():
    from pyquant.finetune.augment import low_pass

    i = torch.arange(16, dtype=torch.float64)
    low = torch.cos(2 * torch.pi * 2 * i / 16)  # 2 cycles: 0.25 of Nyquist
    high = torch.cos(torch.pi * i)  # the Nyquist frequency (checkerboard along the width)
    x = (low + high).reshape(1, 1, 1, 16).expand(2, 3, 16, 16).float().contiguous()
    y = low_pass(x, 0.5)
    torch.testing.assert_close(y, low.reshape(1, 1, 1, 16).expand(2, 3, 16, 16).float(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="keep"):
        low_pass(x, 0.0)
