"""Real-data loaders for evaluation (never used for calibration by the data-free recipes)."""

from pyquant.data.cifar import CIFAR_MEAN, CIFAR_STD, find_shared_data, load_cifar10_npz, evaluate_top1
from pyquant.data.digits import load_digits_split
from pyquant.data.eval_data import load_eval_data

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "find_shared_data", "load_cifar10_npz", "evaluate_top1", "load_digits_split",
           "load_eval_data"]
