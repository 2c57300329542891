"""Builds pyquant._C with torch.utils.cpp_extension (ninja).

Environment:
  FORCE_CUDA=1           build the CUDA kernels even when no GPU is visible (needs a CUDA build of torch
                         and a CUDA toolkit; point CUDA_HOME at the directory holding lib64/libcudart.so).
  TORCH_CUDA_ARCH_LIST   CUDA architectures (default "8.0;9.0" when no GPU is visible).
  MAX_JOBS               parallel compile jobs (ninja).
  DEBUG=1                -O0 -g builds.
Install with --no-build-isolation so the build uses the torch already installed (see README).
"""

import glob
import json
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - build-time guidance
    sys.exit(
        "pyquant: install torch first (pip install torch==2.13.0), then build with "
        "pip install --no-build-isolation ."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.getenv("DEBUG", "0") == "1"
FORCE_CUDA = os.getenv("FORCE_CUDA", "0") == "1"


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


# Kernel files compiled once per CPU variant (see csrc/cpu/isa.h); everything else once.
ISA_SOURCES = rel(glob.glob(os.path.join(ROOT, "csrc/ops/*/cpu/*_kernel.cpp")))
CPP_SOURCES = [
    s
    for s in rel(
        glob.glob(os.path.join(ROOT, "csrc/*.cpp"))
        + glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp"))
        + glob.glob(os.path.join(ROOT, "csrc/ops/*/*.cpp"))
        + glob.glob(os.path.join(ROOT, "csrc/ops/*/cpu/*.cpp"))
    )
    if s not in ISA_SOURCES
]
CUDA_SOURCES = rel(glob.glob(os.path.join(ROOT, "csrc/ops/*/cuda/*.cu")))

# The flags ATen itself uses for its AVX2 / AVX-512 kernel builds.
ISA_VARIANTS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}
IS_X86 = os.uname().machine in ("x86_64", "AMD64", "i686")


def want_cuda():
    if FORCE_CUDA:
        if torch.version.cuda is None:
            sys.exit(
                f"pyquant: FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build; install a CUDA build "
                "of torch (e.g. torch==2.14.1) to compile the CUDA kernels"
            )
        return True
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and torch.cuda.is_available()


WITH_CUDA = want_cuda()
if WITH_CUDA and not os.getenv("TORCH_CUDA_ARCH_LIST"):
    # torch would otherwise target every architecture it knows when no GPU is visible.
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0" if not torch.cuda.is_available() else ""
    if not os.environ["TORCH_CUDA_ARCH_LIST"]:
        del os.environ["TORCH_CUDA_ARCH_LIST"]
CUDA_ARCHS = os.getenv("TORCH_CUDA_ARCH_LIST", "native") if WITH_CUDA else ""

opt = ["-O0", "-g"] if DEBUG else ["-O3"]
# -ffp-contract=off: no fused multiply-add contractions, so CPU results match ATen and the CUDA
# kernels (built with --fmad=false) operation for operation.
# -fopenmp: at::parallel_for is a header template; without it the pragma is dropped and every kernel
# of ours runs on one thread. The libgomp.so.1 it links is the one torch ships and has already loaded.
cxx_flags = opt + ["-ffp-contract=off", "-fvisibility=hidden", "-fopenmp", "-Wall", "-Wno-unused-function",
                   "-Wno-unknown-pragmas"]
nvcc_flags = (["-O0", "-g", "-lineinfo"] if DEBUG else ["-O3"]) + [
    "--fmad=false",
    "--expt-relaxed-constexpr",
]
define_macros = [
    ("PYQ_BUILD_TORCH_VERSION", json.dumps(torch.__version__)),
    ("Py_LIMITED_API", "0x030A0000"),
]
if WITH_CUDA:
    define_macros += [("WITH_CUDA", None), ("PYQ_CUDA_ARCHS", json.dumps(CUDA_ARCHS))]

include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc/include")]
Extension = cpp_extension.CUDAExtension if WITH_CUDA else cpp_extension.CppExtension
ext = Extension(
    name="pyquant._C",
    sources=CPP_SOURCES + (CUDA_SOURCES if WITH_CUDA else []),
    include_dirs=include_dirs,
    define_macros=define_macros,
    extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
    extra_link_args=["-fopenmp"],
    py_limited_api=True,
)


class BuildExt(cpp_extension.BuildExtension):
    """Compiles the per-CPU-variant kernel objects, then the extension; records build metadata."""

    def build_extension(self, extension):
        variants = ISA_VARIANTS if IS_X86 else {"DEFAULT": []}
        objects = []
        cxx = extension.extra_compile_args["cxx"] if isinstance(extension.extra_compile_args, dict) else []
        for variant, flags in variants.items():
            objects += self.compiler.compile(
                ISA_SOURCES,
                output_dir=os.path.join(self.build_temp, "isa", variant),
                macros=extension.define_macros + [("CPU_CAPABILITY", variant), (f"CPU_CAPABILITY_{variant}", None)],
                include_dirs=extension.include_dirs,
                debug=self.debug,
                extra_postargs={"cxx": cxx + flags, "nvcc": []},
                depends=extension.depends,
            )
        extension.extra_objects = list(extension.extra_objects or []) + objects
        super().build_extension(extension)
        meta = {
            "torch_version": torch.__version__,
            "cuda": WITH_CUDA,
            "cuda_version": torch.version.cuda if WITH_CUDA else None,
            "cuda_archs": CUDA_ARCHS,
            "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
            "debug": DEBUG,
        }
        # Beside the built binary (wheels) and in the source package (in-place and editable builds,
        # where setuptools copies the binary there after this method returns).
        out_dirs = {os.path.dirname(self.get_ext_fullpath(extension.name)), os.path.join(ROOT, "pyquant")}
        for out_dir in out_dirs:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "_build_meta.json"), "w") as f:
                json.dump(meta, f, indent=1)


setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt.with_options(no_python_abi_suffix=True, use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
