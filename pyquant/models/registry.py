"""Model lookup for the ``pyquant`` command: a built-in name, a torchvision model name (weights only from a local
checkpoint, never downloaded) or ``package.module:function`` returning an ``nn.Module``."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownModelError(ValueError):
    """MODEL is neither a built-in name, a torchvision model nor an importable ``module:function``."""


@dataclass
class ModelInfo:
    """What the command needs to know besides the module: the input shape (C, H, W), the normalisation the weights
    were trained with (applied to uint8 evaluation images), the evaluation data to use when none is given, and where
    the weights came from."""

    name: str
    input_shape: Tuple[int, ...]
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    default_eval: Optional[str] = None
    weights: str = ""


@dataclass
class _Builtin:
    build: Callable[[Optional[str]], nn.Module]
    input_shape: Tuple[int, ...]
    mean: Optional[Sequence[float]]
    std: Optional[Sequence[float]]
    shared_prefix: Optional[str] = None  # checkpoint file prefix in the shared data folder
    description: str = ""


def _digits(checkpoint):
    from pyquant.models.digits_cnn import digits_cnn

    return digits_cnn(checkpoint)


def _resnet(depth):
    def build(checkpoint):
        from pyquant.models.checkpoint import load_weights
        from pyquant.models.resnet_cifar import ResNetCifar

        return load_weights(ResNetCifar(depth), checkpoint).eval()
    return build


def _mobilenet(checkpoint):
    from pyquant.models.checkpoint import load_weights
    from pyquant.models.mobilenet_cifar import MobileNetV2Cifar

    return load_weights(MobileNetV2Cifar(), checkpoint).eval()


BUILTIN_MODELS: Dict[str, _Builtin] = {
    "digits-cnn": _Builtin(_digits, (1, 8, 8), None, None,
                           description="BN CNN on scikit-learn's 8x8 digits, trained by pyquant (cached)"),
    **{f"resnet{d}": _Builtin(_resnet(d), (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, shared_prefix=f"resnet{d}-",
                              description=f"CIFAR-10 ResNet-{d} (akamaster layout; --checkpoint)")
       for d in (20, 32, 44, 56)},
    "mobilenet-cifar": _Builtin(_mobilenet, (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD,
                                description="MobileNetV2-style CIFAR-10 network (--checkpoint)"),
}


def _shared_checkpoint(prefix: str) -> Optional[str]:
    from pyquant.data import find_shared_data

    data = find_shared_data()
    if data:
        for f in sorted(os.listdir(data)):
            if f.startswith(prefix) and f.endswith(".th"):
                return os.path.join(data, f)
    return None


def get_model(spec: str, checkpoint: Optional[str] = None) -> Tuple[nn.Module, ModelInfo]:
    """``(model in eval mode, ModelInfo)`` for ``spec``. Built-in CIFAR networks without ``checkpoint`` take the
    shared data folder's weights when it is found; torchvision and CIFAR networks never run on random weights."""
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if spec in BUILTIN_MODELS:
        b = BUILTIN_MODELS[spec]
        if checkpoint is None and b.shared_prefix is not None:
            checkpoint = _shared_checkpoint(b.shared_prefix)
        if checkpoint is None and spec != "digits-cnn":
            raise ValueError(f"model {spec} needs its weights: pass --checkpoint FILE (or set PYQUANT_DATA to the "
                             f"shared data folder)")
        default_eval = "digits" if spec == "digits-cnn" else _shared_cifar_images()
        return b.build(checkpoint), ModelInfo(spec, b.input_shape, b.mean, b.std, default_eval,
                                              checkpoint or "trained by pyquant (cache)")
    if ":" in spec:
        return _from_function(spec, checkpoint)
    tv = _torchvision_builder(spec)
    if tv is not None:
        if checkpoint is None:
            raise ValueError(f"torchvision model {spec}: pass --checkpoint FILE (pyquant never downloads weights)")
        from pyquant.models.checkpoint import load_weights

        model = load_weights(tv(weights=None), checkpoint).eval()
        return model, ModelInfo(spec, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, None, checkpoint)
    raise UnknownModelError(f"unknown model {spec!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}), a "
                            f"torchvision model name (torchvision installed), or package.module:function")


def _shared_cifar_images() -> Optional[str]:
    from pyquant.data import find_shared_data

    data = find_shared_data()
    path = os.path.join(data, "cifar10_test_jpeg_q75.npz") if data else None
    return path if path and os.path.isfile(path) else None


def _torchvision_builder(name: str):
    try:
        import torchvision
    except Exception:  # not installed, or built for another torch (its import then fails with a RuntimeError)
        return None
    try:
        return torchvision.models.get_model_builder(name)
    except ValueError:
        return None


def _from_function(spec: str, checkpoint: Optional[str]):
    module_name, _, fn_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownModelError(f"model {spec!r}: cannot import {module_name!r} ({err})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UnknownModelError(f"model {spec!r}: {module_name} has no function {fn_name!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"model {spec!r}: {fn_name}() returned {type(model).__name__}, not an nn.Module")
    if checkpoint is not None:
        from pyquant.models.checkpoint import load_weights

        load_weights(model, checkpoint)
    return model.eval(), ModelInfo(spec, (), None, None, None, checkpoint or f"{spec}()")
