"""QuantConv2d / QuantLinear: a float layer whose weight goes through a FakeQuantizer.

Attributes (stable names; pyquant.int8 conversion reads them): ``weight`` and ``bias`` (float32
Parameters; ``bias`` always present after BN folding, may be None otherwise), ``weight_quantizer``
(:class:`FakeQuantizer`, per output channel, axis 0, symmetric signed grid), the layer's geometry
(``stride``, ``padding``, ``dilation``, ``groups`` for convolutions) and ``input_quantizer_name``:
the graph-module attribute name of the activation FakeQuantizer that feeds this layer (``None`` when
the input is not quantized). Activation quantizers are separate nodes of the torch.fx graph (see
:mod:`pyquant.quant.graph`), so one quantizer can feed several layers (a ResNet block's conv and its
shortcut) and the graph shows exactly where each sits.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyquant.quant.quantizer import FakeQuantizer
from pyquant.quant.spec import QuantSpec


class _QuantWeightLayer(nn.Module):
    def _init_weights(self, layer: nn.Module, weight_spec: QuantSpec):
        self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.weight_quantizer = FakeQuantizer(weight_spec.replace(axis=0))
        self.input_quantizer_name: Optional[str] = None

    def ensure_bias(self) -> Tensor:
        """Creates a zero bias if the layer has none (bias correction needs one)."""
        if self.bias is None:
            self.bias = nn.Parameter(torch.zeros(self.weight.shape[0], device=self.weight.device), requires_grad=False)
        return self.bias

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)

    def float_weight(self) -> Tensor:
        """The FP32 weight before any rounding step replaced ``weight`` by on-grid values (SQuant)."""
        return self.weight_fp if getattr(self, "weight_fp", None) is not None else self.weight

    def set_rounded_weight(self, rounded: Tensor) -> None:
        """Replaces ``weight`` by already-quantized values (e.g. SQuant's rounding), keeping the FP32
        weight as the buffer ``weight_fp``; ``weight_quantizer(weight)`` then returns them unchanged."""
        if getattr(self, "weight_fp", None) is None:
            self.register_buffer("weight_fp", self.weight.detach().clone())
        with torch.no_grad():
            self.weight.copy_(rounded)

    def calibrate_weight(self) -> None:
        self.weight_quantizer.calibrate(self.weight.detach())


class QuantConv2d(_QuantWeightLayer):
    """``F.conv2d(x, weight_quantizer(weight), bias, ...)``: a Conv2d with fake-quantized weights."""

    def __init__(self, conv: nn.Conv2d, weight_spec: QuantSpec):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d: only padding_mode='zeros' is supported, got {conv.padding_mode!r}")
        self._init_weights(conv, weight_spec)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, input_quantizer={self.input_quantizer_name}")

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(_QuantWeightLayer):
    """``F.linear(x, weight_quantizer(weight), bias)``: a Linear with fake-quantized weights."""

    def __init__(self, linear: nn.Linear, weight_spec: QuantSpec):
        super().__init__()
        self._init_weights(linear, weight_spec)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, input_quantizer={self.input_quantizer_name}"

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
