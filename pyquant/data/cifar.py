"""CIFAR-10 test images from a local .npz (x: uint8 NHWC RGB, y: int64 labels) and top-1 evaluation."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

# The normalisation the akamaster CIFAR ResNet checkpoints were trained with (ImageNet constants).
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


def find_shared_data() -> Optional[str]:
    """The shared data folder (PYQUANT_DATA, or ../shared/data beside the checkout), or None."""
    env = os.environ.get("PYQUANT_DATA")
    candidates = [env] if env else []
    here = os.path.dirname(os.path.abspath(__file__))
    candidates += [os.path.join(here, "..", "..", "..", "shared", "data"), os.path.join(os.getcwd(), "..", "shared", "data")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "resnet20-12fca82f.th")):
            return os.path.abspath(c)
    return None


def load_cifar10_npz(path: str, limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised float32 NCHW images and int64 labels."""
    with np.load(path) as data:
        x = data["x"][:limit] if limit else data["x"]
        y = data["y"][:limit] if limit else data["y"]
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (images - mean) / std, torch.from_numpy(np.asarray(y)).long()


@torch.no_grad()
def evaluate_top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        correct += (model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
    return 100.0 * correct / images.shape[0]
