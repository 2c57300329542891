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


class _TVBasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock's structure: one ReLU module called twice, conv1x1+BN downsample."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class _TVBottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet-50 style): 1x1 -> 3x3 (stride) -> 1x1 (x4), projection shortcut."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += self.downsample(x)
        return self.relu(out)


class TorchvisionStyleResNet(nn.Module):
    """A small network with torchvision ResNet's layout (torchvision is not a dependency): 7x7 stride-2
    stem, max-pool, BasicBlock and Bottleneck stages, adaptive average pool, torch.flatten, fc."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_TVBasicBlock(8, 8), _TVBasicBlock(8, 16, 2))
        self.layer2 = nn.Sequential(_TVBottleneck(16, 8, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def torchvision_style_resnet(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(TorchvisionStyleResNet(), seed)
