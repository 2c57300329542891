"""Modules of a converted int8 network (:func:`pyquant.int8.convert`).

Activations travel between them as uint8 *codes* on a :class:`Grid` (real value = (code - zero_point) * scale).
A signed fake-quant grid ``[qmin, qmax]`` (e.g. the network input's ``[-128, 127]`` with zero-point ``z``)
becomes the uint8 grid ``[qmin + 128, qmax + 128]`` with zero-point ``z + 128``: the same real values, shifted
codes. Every module here is rebuilt from ``config()`` plus ``tensors()`` (see :mod:`pyquant.int8.serialize`).

Arithmetic follows the fake-quant ops it replaces (``ops.fake_quant``'s conventions: ``x * (1/scale)`` in
float32, round half to even, integer zero-point), so codes agree with the fake-quant network's up to the
float32 summation order inside a convolution (int32 in the kernels, float32 in ``F.conv2d``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyquant import ops


@dataclass(frozen=True)
class Grid:
    """A per-tensor uint8 activation grid: codes ``qmin..qmax`` (inside 0..255), ``zero_point``, ``scale``."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def __post_init__(self):
        if not (0 <= self.qmin <= self.qmax <= 255):
            raise ValueError(f"Grid: codes [{self.qmin}, {self.qmax}] do not fit uint8")
        if not (self.scale > 0 and self.scale < float("inf")):
            raise ValueError(f"Grid: scale must be finite and > 0, got {self.scale}")

    @property
    def inv_scale(self) -> float:
        # 1.0f / scale in float32, as ops.fake_quant and the int8 epilogue compute it
        return float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(self.scale, dtype=torch.float32))

    def full_range(self) -> bool:
        return self.qmin == 0 and self.qmax == 255

    def to_dict(self) -> dict:
        return asdict(self)


def quantize(x: Tensor, grid: Grid, upper: Optional[int] = None, inplace: bool = False) -> Tensor:
    """uint8 codes ``clamp(round_half_even(x * (1/scale)) + zero_point, qmin, min(qmax, upper))``
    (``inplace``: ``x`` is a float32 temporary that may be overwritten)."""
    q = x.mul_(grid.inv_scale) if inplace and x.dtype == torch.float32 else x.float() * grid.inv_scale
    q = q.round_().add_(grid.zero_point)
    hi = grid.qmax if upper is None else min(grid.qmax, upper)
    return q.clamp_(grid.qmin, hi).to(torch.uint8)


def dequantize(q: Tensor, grid: Grid) -> Tensor:
    """``(code - zero_point) * scale`` in float32 (exact difference, one rounding)."""
    return q.to(torch.float32, copy=True).sub_(grid.zero_point).mul_(grid.scale)


def relu6_code(grid: Grid) -> int:
    """The code of the real value 6 on ``grid``: ReLU6 before quantizing = clamping codes at it
    (quantization is monotone)."""
    return int(quantize(torch.tensor([6.0]), Grid(grid.scale, grid.zero_point, 0, 255))[0])


class _Int8Module(nn.Module):
    """Shared (de)serialization: ``config()`` is JSON-able, ``tensors()`` go to safetensors."""

    def config(self) -> dict:
        raise NotImplementedError

    def tensors(self) -> Dict[str, Tensor]:
        return {}

    @classmethod
    def from_config(cls, config: dict, tensors: Dict[str, Tensor]) -> "_Int8Module":
        raise NotImplementedError


def _grid_or_none(d: Optional[dict]) -> Optional[Grid]:
    return None if d is None else Grid(**d)


def _dict_or_none(g: Optional[Grid]) -> Optional[dict]:
    return None if g is None else g.to_dict()


class Quantize(_Int8Module):
    """float32 -> uint8 codes on ``grid`` (the fake-quant network's activation quantizer, e.g. its input)."""

    def __init__(self, grid: Grid):
        super().__init__()
        self.grid = grid

    def extra_repr(self) -> str:
        return str(self.grid)

    def forward(self, x: Tensor) -> Tensor:
        return quantize(x, self.grid)

    def config(self) -> dict:
        return {"grid": self.grid.to_dict()}

    @classmethod
    def from_config(cls, config, tensors):
        return cls(Grid(**config["grid"]))


class Dequantize(_Int8Module):
    """uint8 codes on ``grid`` -> float32."""

    def __init__(self, grid: Grid):
        super().__init__()
        self.grid = grid

    def extra_repr(self) -> str:
        return str(self.grid)

    def forward(self, q: Tensor) -> Tensor:
        return dequantize(q, self.grid)

    def config(self) -> dict:
        return {"grid": self.grid.to_dict()}

    @classmethod
    def from_config(cls, config, tensors):
        return cls(Grid(**config["grid"]))


class _WeightLayer(_Int8Module):
    """Prepacked symmetric int8 weight (``w_q``, per-output-channel ``w_scale``), float32 ``bias``, input grid,
    and the fused epilogue: ReLU, and requantization to ``out_grid`` (float32 output when None).
    ``upper``: an extra upper bound on the output codes (a narrower-than-uint8 grid's qmax, ReLU6's 6)."""

    def _init(self, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor], in_grid: Grid,
              out_grid: Optional[Grid], relu: bool, relu6: bool, groups: int = 1):
        if w_q.dtype != torch.int8:
            raise TypeError(f"{type(self).__name__}: w_q must be int8, got {w_q.dtype}")
        self.register_buffer("w_q", w_q.contiguous())
        self.register_buffer("w_scale", w_scale.to(torch.float32).reshape(-1).contiguous())
        n = w_q.shape[0]
        self.register_buffer("bias", (torch.zeros(n) if bias is None else bias.detach()).to(torch.float32).contiguous())
        self.in_grid, self.out_grid, self.relu, self.relu6 = in_grid, out_grid, bool(relu), bool(relu6)
        self.packed = ops.pack_int8_weight(self.w_q, self.w_scale, groups=groups)
        lo, hi = 0, 255
        if out_grid is not None:
            lo, hi = out_grid.qmin, out_grid.qmax
            if relu6:
                hi = min(hi, relu6_code(out_grid))
        self._clamp: Optional[Tuple[int, int]] = None if (lo, hi) == (0, 255) else (lo, hi)
        if out_grid is None and relu6:
            raise ValueError(f"{type(self).__name__}: a fused ReLU6 needs an output grid")

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .cuda() / .cpu() move the buffers; the packed weight is a plain attribute and its layout is
        # the device's (CPU panels vs the CUDA kernels'), so it is packed again from the moved w_q (deterministic)
        super()._apply(fn, *args, **kwargs)
        if self.packed.data.device != self.w_q.device:
            self.packed = ops.pack_int8_weight(self.w_q, self.w_scale, groups=self.packed.groups)
        return self

    def _epilogue_args(self):
        og = self.out_grid
        return dict(bias=self.bias, out_scale=None if og is None else og.scale,
                    out_zero_point=None if og is None else og.zero_point, relu=self.relu or self.relu6)

    def _finish(self, y: Tensor) -> Tensor:
        return y if self._clamp is None else y.clamp_(*self._clamp)

    def tensors(self):
        return {"w_q": self.w_q, "w_scale": self.w_scale, "bias": self.bias}

    def _base_config(self) -> dict:
        return {"in_grid": self.in_grid.to_dict(), "out_grid": _dict_or_none(self.out_grid), "relu": self.relu,
                "relu6": self.relu6}


class Linear(_WeightLayer):
    """``int8_linear``: uint8 ``[*, K]`` codes on ``in_grid`` x prepacked int8 ``[N, K]`` weight, int32
    accumulation, float32 bias, optional ReLU/ReLU6, uint8 codes on ``out_grid`` (or float32)."""

    def __init__(self, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor], in_grid: Grid,
                 out_grid: Optional[Grid] = None, relu: bool = False, relu6: bool = False):
        super().__init__()
        if w_q.dim() != 2:
            raise ValueError(f"Linear: w_q must be [out, in], got shape {tuple(w_q.shape)}")
        self._init(w_q, w_scale, bias, in_grid, out_grid, relu, relu6)

    def extra_repr(self) -> str:
        return f"{self.w_q.shape[1]}, {self.w_q.shape[0]}, relu={self.relu}, relu6={self.relu6}, out={self.out_grid}"

    def forward(self, x: Tensor) -> Tensor:
        y = ops.int8_linear(x.contiguous(), self.in_grid.scale, self.in_grid.zero_point, self.packed,
                            **self._epilogue_args())
        return self._finish(y)

    def config(self):
        return self._base_config()

    @classmethod
    def from_config(cls, config, tensors):
        return cls(tensors["w_q"], tensors["w_scale"], tensors["bias"], Grid(**config["in_grid"]),
                   _grid_or_none(config["out_grid"]), config["relu"], config["relu6"])


class Conv2d(_WeightLayer):
    """``int8_conv2d`` (NCHW or channels_last uint8 codes; output channels_last), otherwise as :class:`Linear`."""

    def __init__(self, w_q: Tensor, w_scale: Tensor, bias: Optional[Tensor], in_grid: Grid, stride=1, padding=0,
                 dilation=1, groups: int = 1, out_grid: Optional[Grid] = None, relu: bool = False,
                 relu6: bool = False, residual_grid: Optional[Grid] = None):
        super().__init__()
        # residual_grid: conv -> add (-> ReLU) fused; forward(x, residual) adds the residual's codes on this
        # grid to the float32 conv output before the ReLU / requantization (ops.int8_conv2d(residual=...)).
        self.residual_grid = residual_grid
        if w_q.dim() != 4:
            raise ValueError(f"Conv2d: w_q must be [out, in/groups, kh, kw], got shape {tuple(w_q.shape)}")
        self.stride, self.padding, self.dilation = (tuple(_pair(v)) for v in (stride, padding, dilation))
        self.groups = int(groups)
        self._init(w_q, w_scale, bias, in_grid, out_grid, relu, relu6, groups=self.groups)

    def extra_repr(self) -> str:
        return (f"{self.w_q.shape[1] * self.groups}, {self.w_q.shape[0]}, kernel_size={tuple(self.w_q.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, relu={self.relu}, "
                f"relu6={self.relu6}, out={self.out_grid}")

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        rg = self.residual_grid
        if (residual is None) != (rg is None):
            raise ValueError("Conv2d: pass a residual exactly when the module has a residual_grid")
        res = {} if rg is None else dict(residual=residual, residual_scale=rg.scale, residual_zero_point=rg.zero_point)
        y = ops.int8_conv2d(x, self.in_grid.scale, self.in_grid.zero_point, self.packed, stride=self.stride,
                            padding=self.padding, dilation=self.dilation, groups=self.groups,
                            **self._epilogue_args(), **res)
        return self._finish(y)

    def config(self):
        return dict(self._base_config(), stride=list(self.stride), padding=list(self.padding),
                    dilation=list(self.dilation), groups=self.groups, residual_grid=_dict_or_none(self.residual_grid))

    @classmethod
    def from_config(cls, config, tensors):
        return cls(tensors["w_q"], tensors["w_scale"], tensors["bias"], Grid(**config["in_grid"]),
                   config["stride"], config["padding"], config["dilation"], config["groups"],
                   _grid_or_none(config["out_grid"]), config["relu"], config["relu6"],
                   _grid_or_none(config.get("residual_grid")))


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(u) for u in v)


class Add(_Int8Module):
    """Requantizing residual add: each input is uint8 codes on its grid (``None``: already float32),
    ``y = a + b`` in float32 as in the fake-quant network, optional ReLU/ReLU6, then uint8 codes on
    ``out_grid`` (float32 when None)."""

    def __init__(self, in_grids: Tuple[Optional[Grid], Optional[Grid]], out_grid: Optional[Grid] = None,
                 relu: bool = False, relu6: bool = False):
        super().__init__()
        self.in_grids, self.out_grid, self.relu, self.relu6 = tuple(in_grids), out_grid, bool(relu), bool(relu6)

    def extra_repr(self) -> str:
        return f"in={self.in_grids}, out={self.out_grid}, relu={self.relu}, relu6={self.relu6}"

    def code_bounds(self) -> Tuple[int, int]:
        """The output-code clamp that stands for the fused ReLU / ReLU6 (quantization is monotone, so
        ``quantize(max(y, 0)) == max(quantize(y), quantize(0))``; likewise ``min(., 6)``)."""
        g = self.out_grid
        lo, hi = g.qmin, g.qmax
        if self.relu or self.relu6:
            lo = min(max(g.zero_point, g.qmin), g.qmax)
        if self.relu6:
            hi = min(hi, relu6_code(g))
        return lo, hi

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        ga, gb = self.in_grids
        if ga is not None and gb is not None and self.out_grid is not None and a.shape == b.shape:
            # codes in, codes out: the C++ op, with no float32 tensor in between
            return ops.int8_add(a, ga.scale, ga.zero_point, b, gb.scale, gb.zero_point, self.out_grid.scale,
                                self.out_grid.zero_point, *self.code_bounds())
        a = a if self.in_grids[0] is None else dequantize(a, self.in_grids[0])
        b = b if self.in_grids[1] is None else dequantize(b, self.in_grids[1])
        y = a + b
        if self.relu6:
            y.clamp_(0.0, 6.0)
        elif self.relu:
            y.clamp_min_(0.0)
        return y if self.out_grid is None else quantize(y, self.out_grid, inplace=True)

    def config(self):
        return {"in_grids": [_dict_or_none(g) for g in self.in_grids], "out_grid": _dict_or_none(self.out_grid),
                "relu": self.relu, "relu6": self.relu6}

    @classmethod
    def from_config(cls, config, tensors):
        return cls(tuple(_grid_or_none(g) for g in config["in_grids"]), _grid_or_none(config["out_grid"]),
                   config["relu"], config["relu6"])


class AvgPool2d(_Int8Module):
    """Average pooling of uint8 codes on ``in_grid``, requantized onto ``out_grid`` (the tied quantizer's grid,
    normally the same one; float32 output when None). ``output_size`` given: adaptive pooling; otherwise
    ``kernel_size``/``stride``/``padding`` (``count_include_pad``, ``ceil_mode`` as nn.AvgPool2d)."""

    def __init__(self, in_grid: Grid, out_grid: Optional[Grid], output_size=None, kernel_size=None, stride=None,
                 padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__()
        self.in_grid, self.out_grid = in_grid, out_grid
        self.output_size = None if output_size is None else _pair(output_size)
        self.kernel_size = None if kernel_size is None else _pair(kernel_size)
        self.stride = None if stride is None else _pair(stride)
        self.padding, self.ceil_mode, self.count_include_pad = _pair(padding), bool(ceil_mode), bool(count_include_pad)
        if self.output_size is None and self.kernel_size is None:
            raise ValueError("AvgPool2d: give output_size (adaptive) or kernel_size")

    def extra_repr(self) -> str:
        what = f"output_size={self.output_size}" if self.output_size else f"kernel_size={self.kernel_size}"
        return f"{what}, in={self.in_grid}, out={self.out_grid}"

    def forward(self, q: Tensor) -> Tensor:
        x = dequantize(q, self.in_grid)
        if self.output_size is not None:
            y = F.adaptive_avg_pool2d(x, self.output_size)
        else:
            y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        return y if self.out_grid is None else quantize(y, self.out_grid, inplace=True)

    def config(self):
        return {"in_grid": self.in_grid.to_dict(), "out_grid": _dict_or_none(self.out_grid),
                "output_size": self.output_size, "kernel_size": self.kernel_size, "stride": self.stride,
                "padding": list(self.padding), "ceil_mode": self.ceil_mode,
                "count_include_pad": self.count_include_pad}

    @classmethod
    def from_config(cls, config, tensors):
        c = dict(config)
        return cls(Grid(**c.pop("in_grid")), _grid_or_none(c.pop("out_grid")), **c)


INT8_MODULES = {m.__name__: m for m in (Quantize, Dequantize, Linear, Conv2d, Add, AvgPool2d)}
