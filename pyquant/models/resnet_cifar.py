"""CIFAR ResNets (He et al., CVPR 2016, section 4.2): depth 6n+2, widths 16/32/64, option-A shortcuts.

Module names follow the widely used akamaster/pytorch_resnet_cifar10 checkpoints, so their state dicts
load with strict=True once the "module." prefix is stripped.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the new channels (He et al., option A)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = OptionAShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes, planes, blocks, stride):
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.pool(x), 1))


def load_checkpoint(path: str) -> dict:
    """A state dict from a local checkpoint, loaded with weights_only=True (nothing is unpickled).
    Accepts a bare state dict or {"state_dict": ...}; strips a DataParallel "module." prefix."""
    from pyquant.models.checkpoint import read_state_dict

    return read_state_dict(path)


def resnet_cifar(depth: int, num_classes: int = 10, checkpoint: Optional[str] = None) -> nn.Module:
    """CIFAR ResNet-`depth` in eval mode; `checkpoint` is a local file (e.g. shared/data/resnet20-*.th)."""
    model = ResNetCifar(depth, num_classes)
    if checkpoint is not None:
        model.load_state_dict(load_checkpoint(checkpoint), strict=True)
    return model.eval()
