"""Loads pyquant._C (the C++/CUDA kernels) and reports how it was built.

The build records the torch version it compiled against in _build_meta.json beside the binary, so a
mismatch is reported in words before the loader can fail on an undefined symbol.
"""

from __future__ import annotations

import json
import os
import warnings

import torch

_META_PATH = os.path.join(os.path.dirname(__file__), "_build_meta.json")


def _read_meta() -> dict:
    try:
        with open(_META_PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


BUILD_META = _read_meta()
_REBUILD_HINT = "rebuild it against the installed torch: pip install --no-build-isolation --force-reinstall -e ."

if BUILD_META.get("torch_version") and BUILD_META["torch_version"] != torch.__version__:
    warnings.warn(
        f"pyquant's C++ extension was built against torch {BUILD_META['torch_version']} but torch "
        f"{torch.__version__} is installed; the kernels may fail to load or misbehave. {_REBUILD_HINT}",
        RuntimeWarning,
        stacklevel=3,
    )

try:
    from pyquant import _C  # noqa: E402  (loading it registers torch.ops.pyquant.*)
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    built = BUILD_META.get("torch_version", "an unknown torch")
    raise ImportError(
        f"pyquant's C++ extension (pyquant._C) failed to load: {exc}. It was built against {built}; "
        f"torch {torch.__version__} is installed. {_REBUILD_HINT}"
    ) from exc


def build_info() -> dict:
    """How the extension was built and what it uses on this machine.

    Keys: ``version``, ``torch_built`` (torch it was compiled against), ``torch_runtime``, ``cuda``
    (CUDA kernels compiled in), ``cuda_version``, ``cuda_archs``, ``cpu_isa`` (the CPU kernel variant
    this process runs: "avx512", "avx2" or "default"; ATEN_CPU_CAPABILITY lowers it) and
    ``cpu_isas_compiled``.
    """
    from pyquant._version import __version__

    return {
        "version": __version__,
        "torch_built": _C.torch_version(),
        "torch_runtime": torch.__version__,
        "cuda": bool(_C.built_with_cuda()),
        "cuda_version": BUILD_META.get("cuda_version"),
        "cuda_archs": _C.cuda_archs() or None,
        "cpu_isa": _C.cpu_isa(),
        "cpu_isas_compiled": list(_C.compiled_cpu_isas()),
    }
