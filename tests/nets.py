"""Small random networks with non-trivial BN statistics for the pipeline tests."""

import torch
from torch import nn

import pyquant
from pyquant.models import randomize_bn


def resnet8(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(pyquant.models.resnet_cifar(8), seed)


def mobilenet(seed=0):
    torch.manual_seed(seed)
    return pyquant.models.mobilenet_v2_cifar(randomize_bn=True, seed=seed)


def sequential_cnn(seed=0, padding=1):
    torch.manual_seed(seed)
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=padding), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=padding, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 3 * 3 if padding == 0 else 16 * 4 * 4, 10)), seed)


def no_bn_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def assert_close_rel(a, b, tol=1e-5):
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"max error {err} > {tol} * {scale}"


def bn_stats_from_data(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Sets every BN's running statistics to the exact statistics of x (cumulative average)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()
