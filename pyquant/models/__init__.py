"""A small model zoo for tests, demos and benchmarks (no downloads: weights come from local files)."""

from pyquant.models.mobilenet_cifar import MobileNetV2Cifar, mobilenet_v2_cifar
from pyquant.models.random_bn import fit_bn_statistics, randomize_bn
from pyquant.models.resnet_cifar import resnet_cifar, load_checkpoint

__all__ = ["resnet_cifar", "load_checkpoint", "mobilenet_v2_cifar", "MobileNetV2Cifar", "randomize_bn", "fit_bn_statistics"]
