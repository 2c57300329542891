"""Reference histogram (DESIGN.md section 6, ``ops.histogram``): torch.histc per channel, with
values outside [lo, hi] moved onto the edges first (the op sends them to the edge bins)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def histogram(x: Tensor, bins: int, lo, hi, axis: Optional[int] = None) -> Tensor:
    """int64 counts [bins] (axis None) or [C, bins]; lo/hi: numbers or tensors with 1 or C values."""
    rows = x.reshape(1, -1).float() if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1).float()
    c = rows.shape[0]
    lo_t = torch.as_tensor(lo, dtype=torch.float32).reshape(-1).expand(c)
    hi_t = torch.as_tensor(hi, dtype=torch.float32).reshape(-1).expand(c)
    out = torch.stack([
        torch.histc(torch.clamp(rows[i], lo_t[i].item(), hi_t[i].item()), bins, lo_t[i].item(), hi_t[i].item())
        for i in range(c)
    ]).long()
    return out[0] if axis is None else out
