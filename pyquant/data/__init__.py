"""Real-data loaders for evaluation (never used for calibration by the data-free recipes)."""

from pyquant.data.cifar import CIFAR_MEAN, CIFAR_STD, find_shared_data, load_cifar10_npz, evaluate_top1

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "find_shared_data", "load_cifar10_npz", "evaluate_top1"]
