"""Guards shared by the public entry points: any grad mode the caller is in, validated batches, input shapes
that fit the model, writable output paths."""

from __future__ import annotations

import functools
import numbers
import os
from typing import Optional, Sequence

import torch
from torch import Tensor


def _as_normal_tensor(value):
    # An inference tensor (made under the caller's torch.inference_mode) cannot be saved for backward;
    # a clone made outside inference mode is an ordinary tensor with the same values.
    if isinstance(value, Tensor) and value.is_inference():
        return value.clone()
    return value


def any_grad_mode(fn):
    """Runs ``fn`` with autograd available (``inference_mode(False)`` + ``enable_grad``) whatever mode
    the caller is in (``no_grad``, ``inference_mode``), so steps that optimise (distillation,
    reconstruction) work; tensor arguments made in inference mode are cloned into ordinary tensors.
    Steps that need no gradient keep their own ``no_grad`` blocks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            args = tuple(_as_normal_tensor(a) for a in args)
            kwargs = {k: _as_normal_tensor(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper


def check_batch(name: str, value: Optional[Tensor], sample_shape: Sequence[int]) -> Optional[Tensor]:
    """``value`` (None allowed) must be a floating-point, finite tensor ``[N, *sample_shape]`` with N >= 1;
    raises TypeError / ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    shape = tuple(sample_shape)
    want = "[N, " + ", ".join(str(s) for s in shape) + "]"
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() != len(shape) + 1 or tuple(value.shape[1:]) != shape:
        raise ValueError(f"{name} must have shape {want} (a batch of input_shape samples), got {tuple(value.shape)}")
    if value.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or Inf")
    return value


def check_input_fits(model: torch.nn.Module, shape: Sequence[int], device=None, who: str = "input_shape") -> None:
    """Runs ``model`` once on a zero batch ``[2, *shape]`` (eval mode, no grad; the training flag restored, so
    no BatchNorm statistic moves) and raises ``ValueError`` naming ``who`` when the shape does not fit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((2, *shape), device=device))
    except Exception as err:
        raise ValueError(f"{who} {tuple(shape)} does not fit the model: {type(err).__name__}: {err}") from err
    finally:
        model.train(was_training)


def check_output_path(who: str, path) -> str:
    """``path`` must be a str / os.PathLike whose folder exists and is writable; returns it as a str."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{who}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{who}: path {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"{who}: the folder of path {path} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{who}: the folder of path {path} is not writable")
    return path


def check_sample_shape(input_shape) -> tuple:
    """``input_shape`` (C, H, W, or any positive sizes of one sample: ints, numpy ints, a torch.Size) as a
    tuple of ints; a float or bool size is an error, not truncated."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a sequence of ints (C, H, W), got {input_shape!r}") from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape):
        raise ValueError(f"input_shape must hold positive ints (C, H, W), got {input_shape!r}")
    return tuple(int(s) for s in shape)
