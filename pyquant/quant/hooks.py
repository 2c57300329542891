"""Forward hooks that live only for one block: the "hook some layers, run the model, unhook" pattern
of the data-driven steps (ABN, bias correction, the report, the int8 faithfulness check)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Tuple

from torch import nn


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[Tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Registers each ``(module, hook)`` as a forward hook for the ``with`` block and removes them all
    when it ends, also on an exception (a left-over hook would silently change later forwards)."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
