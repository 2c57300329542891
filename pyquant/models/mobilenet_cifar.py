"""A MobileNetV2-style CIFAR network (Sandler et al., CVPR 2018): inverted residual blocks
(1x1 expand -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1 linear projection -> BN, identity
shortcut when stride 1 and widths match). Small widths, for structural tests of the quantization
pipeline (depthwise convolutions, ReLU6, linear bottlenecks); random weights unless a state dict is
given."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from pyquant.models import random_bn


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn_relu6(cin, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, output channels c, repeats n, first stride s), as Table 2 of the paper, scaled down.
DEFAULT_CONFIG: Tuple[Tuple[int, int, int, int], ...] = ((1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 2, 2), (6, 24, 2, 2))


class MobileNetV2Cifar(nn.Module):
    def __init__(self, num_classes: int = 10, config: Sequence[Tuple[int, int, int, int]] = DEFAULT_CONFIG,
                 stem: int = 16, last: int = 64):
        super().__init__()
        self.stem = _conv_bn_relu6(3, stem, 3)
        blocks, cin = [], stem
        for t, c, n, s in config:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*blocks)
        self.head = _conv_bn_relu6(cin, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        x = self.head(self.features(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def mobilenet_v2_cifar(num_classes: int = 10, state_dict: Optional[dict] = None, randomize_bn: bool = False,
                       seed: int = 0) -> nn.Module:
    """MobileNetV2-style CIFAR net in eval mode. ``randomize_bn`` gives every BN non-trivial random
    statistics and affine parameters (for tests on untrained weights)."""
    model = MobileNetV2Cifar(num_classes)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    elif randomize_bn:
        return random_bn.randomize_bn(model, seed)
    return model.eval()
