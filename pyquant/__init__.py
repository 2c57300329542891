"""pyquant: data-free quantization for PyTorch on fused C++/CUDA kernels.

Public API (DESIGN.md section 6): ``pyquant.ops`` (the kernels, as torch.ops.pyquant.*),
``pyquant.build_info()``, ``pyquant.__version__``.
"""

from pyquant._version import __version__
from pyquant._extension import build_info
from pyquant import ops, reference

__all__ = ["__version__", "build_info", "ops", "reference"]
