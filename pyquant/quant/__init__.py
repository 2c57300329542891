"""Model surgery for fake quantization (DESIGN.md section 2).

:class:`QuantSpec` (one quantizer's settings), :class:`FakeQuantizer` (static affine quantizer on
``ops.fake_quant``), :class:`QuantConv2d` / :class:`QuantLinear` (weight quantizer; their input
quantizer is a separate graph node named by ``input_quantizer_name``), :func:`fold_bn` (BN folding,
statistics kept as :class:`FoldedBN`), :func:`prepare` (the torch.fx placement policy, see
:mod:`pyquant.quant.graph`), :func:`quantize_weights`, :func:`calibrate_activations` and the
per-layer :class:`QuantReport`.
"""

from pyquant.quant.graph import (
    FoldedBN,
    act_quantizers,
    activation_sites,
    calibrate_activations,
    check_supported,
    fold_bn,
    input_quantizers,
    prepare,
    quant_layers,
    quantize_weights,
    replace_relu6,
    resolve_ties,
    set_activation_quant,
    trace,
)
from pyquant.quant.modules import QuantConv2d, QuantLinear
from pyquant.quant.quantizer import FakeQuantizer
from pyquant.quant.report import LayerReport, QuantReport, build_report, sqnr_db
from pyquant.quant.spec import QuantSpec

__all__ = ["QuantSpec", "FakeQuantizer", "QuantConv2d", "QuantLinear", "FoldedBN", "fold_bn", "prepare", "trace",
           "check_supported", "activation_sites", "quantize_weights", "calibrate_activations", "quant_layers",
           "act_quantizers", "input_quantizers", "set_activation_quant", "replace_relu6", "resolve_ties", "QuantReport",
           "LayerReport",
           "build_report", "sqnr_db"]
