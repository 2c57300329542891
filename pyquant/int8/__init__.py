"""True int8 inference: :func:`convert` a fake-quant network from :func:`pyquant.quantize` to the int8 kernels
(``ops.int8_conv2d`` / ``ops.int8_linear``), measure its faithfulness (:func:`compare_codes`), :func:`save` /
:func:`load` it (safetensors + JSON, no pickle) and :func:`export_onnx` it as QDQ ONNX. See docs/int8_inference.md."""

from pyquant.int8.convert import convert
from pyquant.int8.faithfulness import compare_codes, fake_quant_codes, int8_codes
from pyquant.int8.modules import Add, AvgPool2d, Conv2d, Dequantize, Grid, Linear, Quantize
from pyquant.int8.serialize import load, save
from pyquant.int8.onnx_export import export_onnx

__all__ = ["convert", "save", "load", "export_onnx", "compare_codes", "fake_quant_codes", "int8_codes", "Linear",
           "Conv2d", "Quantize", "Dequantize", "Add", "AvgPool2d", "Grid"]
