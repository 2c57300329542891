"""A small model zoo for tests, demos and benchmarks (no downloads: weights come from local files, or, for the
digits CNN, from training it here), safe checkpoint loading and the model lookup of the ``pyquant`` command."""

from pyquant.models.checkpoint import CheckpointMismatchError, load_weights, read_state_dict
from pyquant.models.digits_cnn import DigitsCNN, digits_cnn
from pyquant.models.mobilenet_cifar import MobileNetV2Cifar, mobilenet_v2_cifar
from pyquant.models.mobilenet_v2 import MobileNetV2, mobilenet_v2
from pyquant.models.random_bn import fit_bn_statistics, randomize_bn
from pyquant.models.registry import BUILTIN_MODELS, ModelInfo, UnknownModelError, get_model
from pyquant.models.resnet_cifar import resnet_cifar, load_checkpoint

__all__ = ["resnet_cifar", "load_checkpoint", "mobilenet_v2_cifar", "MobileNetV2Cifar", "MobileNetV2", "mobilenet_v2",
           "randomize_bn", "fit_bn_statistics", "DigitsCNN", "digits_cnn", "get_model", "ModelInfo", "BUILTIN_MODELS",
           "UnknownModelError", "load_weights", "read_state_dict", "CheckpointMismatchError"]
