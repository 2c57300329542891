"""Safe checkpoint loading: nothing is unpickled (``torch.load(weights_only=True)`` or safetensors)."""

from __future__ import annotations

import os
from typing import Dict, Mapping, Union

import torch
from torch import nn

# Wrappers around a state dict that training scripts commonly write.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes added by DataParallel / DistributedDataParallel and by torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model (missing or unexpected keys, other shapes)."""


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The state dict in ``path`` (.safetensors, or a torch file read with weights_only=True): a bare state dict or
    one under ``state_dict`` / ``model_state_dict`` / ``model``; ``module.`` and ``_orig_mod.`` prefixes stripped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle.UnpicklingError for non-tensor objects, RuntimeError for a non-torch file
            raise ValueError(f"checkpoint {path} cannot be read safely (torch.load weights_only=True): "
                             f"{str(err).splitlines()[0]}") from None
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} holds no state dict (a mapping of names to tensors)")
    state = {}
    for k, v in obj.items():
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state


def load_weights(model: nn.Module, checkpoint: Union[str, Mapping[str, torch.Tensor]]) -> nn.Module:
    """Loads ``checkpoint`` (a path or a state dict) into ``model`` strictly; a mismatch raises
    :class:`CheckpointMismatchError` saying which keys and shapes differ."""
    state = read_state_dict(checkpoint) if isinstance(checkpoint, str) else dict(checkpoint)
    source = checkpoint if isinstance(checkpoint, str) else "the state dict"
    own = model.state_dict()
    # BatchNorm fills in a missing step counter itself (older checkpoints do not store it)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
        raise CheckpointMismatchError(f"checkpoint {source} does not match {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model
