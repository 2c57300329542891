"""scikit-learn's bundled handwritten digits (UCI optdigits test set, 1,797 real 8x8 images, 10 classes; shipped
inside scikit-learn, nothing downloaded) as a fixed train / held-out split for the default job."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

# Pixel statistics of all 1,797 images (values 0..16); inputs are standardized with them so the network sees mean 0,
# std 1 (the input statistics ZeroQ's input term targets).
DIGITS_MEAN = 4.884166
DIGITS_STD = 6.016787
NUM_HELD_OUT = 450
SPLIT_SEED = 0


def _load_sklearn_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn is a default dependency; this only fires on a partial install
        raise ImportError("the digits data set comes with scikit-learn: pip install scikit-learn") from err
    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def load_digits_split(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 [N, 1, 8, 8] standardized, labels int64 [N])`` for ``split`` = ``"train"`` (1,347 images)
    or ``"test"`` (the 450 held-out images). The split is one fixed permutation (seed 0), the same everywhere."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_sklearn_digits()
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(images))
    idx = perm[:-NUM_HELD_OUT] if split == "train" else perm[-NUM_HELD_OUT:]
    x = torch.from_numpy((images[idx] - DIGITS_MEAN) / DIGITS_STD).unsqueeze(1).contiguous()
    return x, torch.from_numpy(labels[idx])
