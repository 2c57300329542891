"""Reference for the int8 ops of csrc/ops/int8_gemm (int8_linear, int8_conv2d): integer accumulation in int64 (linear) or
exact float64 (conv: every partial sum is an integer below 2^53), then the epilogue of
csrc/include/pyquant/requantize.h in float32, operation by operation:

    acc = sum_k (x_q - zx) * w_q                       (exact)
    y   = float32(acc) * (float32(sx) * sw) + bias      (two float32 roundings, no fma)
    y   = max(y, 0)                                     (ReLU)
    q   = clamp(round_half_even(y * (1 / float32(s_out))) + z_out, 0, 255)   (uint8 output)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _epilogue(acc: Tensor, x_scale: float, w_scale: Tensor, bias: Optional[Tensor], out_scale, out_zero_point,
              relu: bool, channel_dim: int, residual=None, residual_scale=1.0, residual_zero_point=0) -> Tensor:
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    mult = torch.tensor(x_scale, dtype=torch.float32) * w_scale.to(torch.float32)
    y = acc.to(torch.int32).to(torch.float32) * mult.reshape(shape)
    y = y + (bias.to(torch.float32).reshape(shape) if bias is not None else torch.zeros((), dtype=torch.float32))
    if residual is not None:  # fused residual add: (r - zr) * sr in float32, added before the ReLU
        y = y + (residual.to(torch.float32) - float(residual_zero_point)) * torch.tensor(residual_scale,
                                                                                         dtype=torch.float32)
    if relu:
        y = torch.clamp_min(y, 0.0)
    if out_scale is None:
        return y
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(out_scale, dtype=torch.float32)
    q = torch.round(y * inv) + float(out_zero_point)
    return q.clamp(0, 255).to(torch.uint8)


def int8_linear(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Tensor,
                bias: Optional[Tensor] = None, out_scale=None, out_zero_point=None, relu: bool = False) -> Tensor:
    """``x_q`` uint8 ``[M, K]``, ``w_q`` int8 ``[N, K]``."""
    acc = (x_q.to(torch.int64) - int(x_zero_point)) @ w_q.to(torch.int64).t()
    return _epilogue(acc, x_scale, w_scale, bias, out_scale, out_zero_point, relu, channel_dim=-1)


def int8_conv2d(x_q: Tensor, x_scale: float, x_zero_point: int, w_q: Tensor, w_scale: Tensor,
                bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1, groups: int = 1, out_scale=None,
                out_zero_point=None, relu: bool = False, residual: Optional[Tensor] = None, residual_scale=1.0,
                residual_zero_point=0) -> Tensor:
    """``x_q`` uint8 ``[N, C, H, W]``, ``w_q`` int8 ``[C_out, C / groups, kh, kw]``; zero padding of
    ``x_q - zx`` (padding holds the real value 0)."""
    xc = x_q.to(torch.float64) - float(x_zero_point)
    acc = torch.nn.functional.conv2d(xc, w_q.to(torch.float64), None, stride, padding, dilation, groups)
    return _epilogue(acc.round().to(torch.int64), x_scale, w_scale, bias, out_scale, out_zero_point, relu,
                     channel_dim=1, residual=residual, residual_scale=residual_scale,
                     residual_zero_point=residual_zero_point)


def int8_add(a_q: Tensor, a_scale: float, a_zero_point: int, b_q: Tensor, b_scale: float, b_zero_point: int,
             out_scale: float, out_zero_point: int, quant_min: int = 0, quant_max: int = 255) -> Tensor:
    """Requantizing add of uint8 codes (csrc/ops/int8_add), float32 operation by operation:
    ``q = clamp(round_half_even(((a - za) * sa + (b - zb) * sb) * (1 / s_out)) + z_out, quant_min, quant_max)``."""
    f32 = torch.float32
    da = (a_q.to(f32) - float(a_zero_point)) * torch.tensor(a_scale, dtype=f32)
    db = (b_q.to(f32) - float(b_zero_point)) * torch.tensor(b_scale, dtype=f32)
    inv = torch.tensor(1.0, dtype=f32) / torch.tensor(out_scale, dtype=f32)
    q = torch.round((da + db) * inv) + float(out_zero_point)
    return q.clamp(quant_min, quant_max).to(torch.uint8)
