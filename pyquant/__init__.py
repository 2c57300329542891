"""pyquant: data-free quantization for PyTorch on fused C++/CUDA kernels.

Public API (DESIGN.md section 6): ``pyquant.ops`` (the kernels, as torch.ops.pyquant.*),
``pyquant.build_info()``, ``pyquant.__version__``.
"""

from pyquant._version import __version__
from pyquant._extension import build_info
from pyquant import ops, reference
from pyquant import distill  # noqa: E402  (pyquant.distill.zeroq and friends)

__all__ = ["__version__", "build_info", "ops", "reference", "distill"]
