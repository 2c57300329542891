"""pyquant: data-free quantization for PyTorch on fused C++/CUDA kernels.

Public API (DESIGN.md section 6): ``pyquant.ops`` (the kernels, as torch.ops.pyquant.*),
``pyquant.calib`` (range estimators), ``pyquant.distill`` (synthetic data), ``pyquant.mixed`` (ZeroQ
mixed-precision bit allocation), ``pyquant.models``, ``pyquant.quant`` (model surgery), ``pyquant.dfq``
(data-free transforms), ``pyquant.quantize`` and ``pyquant.Recipe`` (the pipeline),
``pyquant.build_info()``, ``pyquant.__version__``.
"""

from pyquant._version import __version__
from pyquant._extension import build_info
from pyquant import ops, reference
from pyquant import calib, distill, models  # noqa: E402  (pyquant.distill.zeroq, pyquant.models.resnet_cifar, ...)
from pyquant import mixed  # noqa: E402  (pyquant.mixed.layer_sensitivity, allocate_bits, pareto_frontier)
from pyquant import dfq, quant  # noqa: E402
from pyquant.recipes import RECIPES, Recipe, quantize  # noqa: E402
from pyquant import int8  # noqa: E402  (pyquant.int8.convert, save, load, export_onnx)

__all__ = ["__version__", "build_info", "ops", "reference", "calib", "distill", "mixed", "models", "quant", "dfq",
           "quantize", "Recipe", "RECIPES"]
