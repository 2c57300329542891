"""Guards shared by the public entry points: any grad mode the caller is in, validated batches."""

from __future__ import annotations

import functools
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
